"""What a name in the IR may be: the one place where names are validated.

Every name in a graph becomes code somewhere (a Python attribute, a module path, a `state_dict`
key, a DOT node), so the IR only holds names that are safe everywhere:

    identifier     ASCII letters, digits and `_`, not starting with a digit     qkv, GPT2, B
    scope path     segments of ASCII letters, digits and `_` joined by `.`     h.0.attn.qkv, 0_conv1
                   ("" is the model); torch reads `0_conv1` as `_modules['0_conv1']`
    parameter      a scope path and one more segment                            h.0.attn.qkv.weight

ASCII only: Python folds identifiers by NFKC (`ﬁ` is `fi` to it), so a Unicode name could make
two instances one attribute. The elaborator only makes such names (the grammar's NAME is ASCII,
`@scope` paths are checked with `bad_scope_segment`); `check_graph_names` holds an IR file to
the same rules when it is loaded, so a hand-made or hostile file is refused with a clear message.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archc.ir.graph import Graph

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SEGMENT = re.compile(r"[A-Za-z0-9_]+")


def is_identifier(name: str) -> bool:
    return IDENTIFIER.fullmatch(name) is not None


def bad_scope_segment(path: str) -> str | None:
    """The first segment of `path` that is not ASCII letters, digits and `_`; None if all are."""
    if path == "":
        return None
    return next((seg for seg in path.split(".") if not SEGMENT.fullmatch(seg)), None)


def check_graph_names(graph: Graph) -> None:
    """Raise ValueError naming the first name in `graph` that breaks the rules above."""

    def need(ok: bool, what: str, name: str) -> None:
        if not ok:
            raise ValueError(f"{what} {name!r} is not a valid name (ASCII letters, digits and '_'; "
                             "scope paths join such names and indices with '.')")

    need(is_identifier(graph.name), "model name", graph.name)
    for port in (*graph.inputs, *graph.outputs):
        need(is_identifier(port.name), "port name", port.name)
    for axis in graph.axes:
        need(is_identifier(axis), "axis", axis)
    for key in graph.model_args:
        need(is_identifier(key), "model argument", key)
    for path in graph.scopes:
        need(bad_scope_segment(path) is None, "scope path", path)
    for node in graph.nodes:
        need(bad_scope_segment(node.scope) is None, "scope path", node.scope)
        for role in node.params:
            need(role == "" or is_identifier(role), "parameter role", role)
    for name in graph.params:
        need(name != "" and bad_scope_segment(name) is None, "parameter name", name)
