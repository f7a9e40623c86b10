"""Run a few IR nodes eagerly in eval mode, on tensors, through each op's own torch spelling
(`Op.torch_expr`). Re-parameterization uses it to read a linear region's matrix off its
response to the identity (RepMLP's conv-to-FC trick, notes T9) when the region changes layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from archc.ir.graph import Node
from archc.ir.types import TensorType
from archc.ops import registry

if TYPE_CHECKING:
    from torch import Tensor


class _Eval:
    training = False


def _drop_path(x: "Tensor", p: float, training: bool) -> "Tensor":
    return x  # eval mode


def run_nodes(nodes: Sequence[Node], types: Mapping[str, TensorType], env: dict[str, "Tensor"],
              weights: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """Evaluate `nodes` in order; `env` holds the values they read and receives what they define."""
    import torch
    import torch.nn.functional as F

    scope = {"F": F, "torch": torch, "self": _Eval(), "drop_path": _drop_path, "__builtins__": {}}
    for node in nodes:
        op = registry.get(node.op)
        local = {f"_x{i}": env[v] for i, v in enumerate(node.inputs)}
        local.update({f"_p{i}": weights[name] for i, name in enumerate(node.params.values())})
        params = {role: f"_p{i}" for i, role in enumerate(node.params)}
        text = op.torch_expr(op.make_attrs(node.attrs), list(local)[:len(node.inputs)], params,
                             [types[v] for v in node.inputs])
        try:
            result = eval(text, scope, local)  # noqa: S307  (the registry's own spelling of a validated node)
        except Exception as err:  # name the node that failed, as torch.fx's interpreter does
            raise RuntimeError(f"evaluating {node.op} at scope '{node.scope}' ({text}): {err}") from err
        outs = result if len(node.outputs) > 1 else (result,)
        env.update(zip(node.outputs, outs))
    return env
