"""Elaboration: AST -> typed IR. Resolves names and imports, instantiates blocks with their
parameters, unifies named-axis types, unrolls loops and stacks, and emits op nodes."""

from archc.elaborate.elaborator import Limits, elaborate_file, elaborate_text

__all__ = ["Limits", "elaborate_file", "elaborate_text"]
