"""Names in generated code: variables that never shadow, and accessors for module-tree paths.

Like torch.fx's namespace: a variable is derived from what it is (the scope path of the node that
makes it, then the op: `h_0_attn_qkv`, `h_0_attn_rearrange`), sanitized into an identifier, and
numbered (`_1`, `_2`) when the name is taken or would shadow a keyword, a builtin or a name the
generated file defines.
"""

from __future__ import annotations

import builtins
import keyword
import re

from archc.ir.graph import Graph, Node

# Names the generated module defines or imports at top level, plus `self`.
FILE_GLOBALS = frozenset({"torch", "nn", "F", "drop_path", "Scope", "self",
                          "nm_mask", "magnitude_mask", "block_mask", "_rank_keep",  # masks.py
                          "MaskedLinear", "MaskedConv1d", "MaskedConv2d", "_Masked",
                          "fff", "fff_neurons", "node_entropy", "ACTIVATIONS", "_mixture", "_descend",  # conditional.py
                          "_fff_descend", "_reach", "_grouped_mm", "FULL_LOGITS", "moe_route", "moe_load",
                          "moe_experts", "_expert_ffn", "_hidden", "_positions", "_kept", "_moe_loop", "_moe_grouped", "_moe_batched",
                          "moe_select", "moe_combine",
                          "pool_mixer_residual", "_pool_mixer_plain"})  # fused.py
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | FILE_GLOBALS


def sanitize(text: str) -> str:
    """An ASCII identifier from any text: every other character becomes `_`, a leading digit gets
    `_`. ASCII only: Python folds identifiers by NFKC, so `ﬁ` and `fi` would be one variable."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "v"
    return f"_{out}" if out[0].isdigit() else out


class Namer:
    """Hands out unique identifiers; a name is never given twice."""

    def __init__(self, taken: frozenset[str] | set[str] = RESERVED) -> None:
        self.used: set[str] = set(taken)
        self.next: dict[str, int] = {}  # base -> the suffix to try first (all below it are taken)

    def take(self, base: str) -> str:
        """`base`, else `base_1`, `base_2`, ...: the first one free. Probing resumes where the last
        call for the same base stopped, so n names of one base cost O(n), not O(n**2)."""
        base = sanitize(base)
        n = self.next.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        self.next[base] = n + 1
        return name


def node_base(node: Node, graph: Graph) -> str:
    """What to call a node's result: its own scope when the node is that instance, else scope + op."""
    info = graph.scopes.get(node.scope)
    if node.scope and node.params and info is not None and info.kind == node.op:
        return node.scope
    return f"{node.scope}.{node.op}" if node.scope else node.op


def value_names(graph: Graph, taken: frozenset[str] | set[str] = RESERVED) -> dict[str, str]:
    """A variable name for every value id: inputs keep their port names where they can."""
    namer = Namer(taken)
    names = {port.value: namer.take(port.name) for port in graph.inputs}
    for node in graph.nodes:
        base = node_base(node, graph)
        if len(node.outputs) == 1:
            names[node.outputs[0]] = namer.take(base)
        else:
            for i, out in enumerate(node.outputs):
                names[out] = namer.take(f"{base}_{i}")
    return names
