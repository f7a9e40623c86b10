"""ONNX: the torch target exported with `torch.onnx` (its TorchScript exporter), then checked
with onnxruntime. Every symbolic axis of an input or output (`B`, `T`) becomes a dynamic axis
with the same name, so one file serves every batch size and sequence length."""

from __future__ import annotations

import io
import warnings
from typing import Any

from archc.errors import ArchError
from archc.ir.graph import Graph
from archc.numeric import ATOL, RTOL, Closeness, compare

OPSET = 17


def port_names(graph: Graph) -> tuple[list[str], list[str]]:
    """The ONNX names of the inputs and the outputs. ONNX needs them distinct: the inputs keep the
    spec's names, and an output whose archc name (`out`, `out0`) is also an input's gets `_1`, `_2`.
    A name ONNX cannot hold (empty, not UTF-8, two inputs of one name) is an ArchError."""
    inputs = [p.name for p in graph.inputs]
    for name in inputs:
        if not name or not _utf8(name):
            raise ArchError(f"--target onnx: the input name {name!r} cannot be an ONNX name")
    if len(set(inputs)) != len(inputs):
        dup = next(n for n in inputs if inputs.count(n) > 1)
        raise ArchError(f"--target onnx: two inputs are named {dup!r}; ONNX needs distinct names")
    used, outputs = set(inputs), []
    for p in graph.outputs:
        base = p.name if p.name and _utf8(p.name) else "out"
        name, n = base, 0
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        outputs.append(name)
    return inputs, outputs


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return False
    return True


def _dynamic_axes(graph: Graph) -> dict[str, dict[int, str]]:
    inputs, outputs = port_names(graph)
    ports = list(zip(inputs, graph.inputs)) + list(zip(outputs, graph.outputs))
    return {name: {i: _axis_name(s) for i, s in enumerate(p.type.sizes) if not s.is_const} for name, p in ports}


def _axis_name(size: object) -> str:
    """A dynamic axis's name: the symbolic size as written (`B`, `4*D`), any text ONNX can store."""
    text = str(size)
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode()


def _register_symbolics() -> None:
    """ONNX spellings for the aten ops the TorchScript exporter lacks (at every opset)."""
    import torch
    from torch.onnx import register_custom_op_symbolic

    def rms_norm(g: Any, x: Any, shape: Any, weight: Any, eps: Any) -> Any:
        # x / sqrt(mean(x^2, last axis) + eps) * weight; archc's rmsnorm normalizes the last axis
        eps_value = eps.node().t("value").item() if eps.node().kind() == "onnx::Constant" else 1e-6
        if eps_value != eps_value:  # None in the graph: torch's default, the dtype's epsilon
            eps_value = float(torch.finfo(torch.float32).eps)
        square = g.op("Mul", x, x)
        mean = g.op("ReduceMean", square, axes_i=[-1], keepdims_i=1)
        denom = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps_value))))
        out = g.op("Div", x, denom)
        if weight.node().mustBeNone():
            return out
        return g.op("Mul", out, weight)

    register_custom_op_symbolic("aten::rms_norm", rms_norm, OPSET)


def export_onnx(graph: Graph, module: Any = None, opset: int = OPSET) -> bytes:
    """The model (a fresh torch-target module, or `module` with its weights) as ONNX bytes.

    What is exported is the module written `whole`: sizes that a tensor-parallel rank would read
    from its tensors (heads) are written down. Read at run time, they become shape arithmetic that
    onnxruntime's graph optimizer folds into a Reshape with a 0 (copy) and a -1 (infer), which an
    input with no rows leaves undecided (an expert that gets no token). `module`'s weights are
    loaded into it; a module whose state_dict is not the graph's (wrapped by PEFT, say) is exported
    as it is."""
    import torch

    from archc.backends.torch.inputs import example_inputs

    _register_symbolics()
    module = _whole(graph, module).eval()
    buffer = io.BytesIO()
    inputs, outputs = port_names(graph)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on traced shapes and deprecations
        torch.onnx.export(module, example_inputs(graph), buffer, dynamo=False, opset_version=opset,
                          input_names=inputs, output_names=outputs,
                          dynamic_axes=_dynamic_axes(graph))
    return buffer.getvalue()


def _whole(graph: Graph, module: Any) -> Any:
    """A module of `graph` built whole, with `module`'s weights (or `module` itself, see export_onnx)."""
    from archc.backends.torch import build_module

    whole = build_module(graph, whole=True)
    if module is None:
        return whole
    try:
        whole.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError:
        return module
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return whole.to(first.dtype) if first is not None else whole


def max_diff(graph: Graph, module: Any, data: bytes, sizes: dict[str, int] | None = None) -> float:
    """The max abs difference between onnxruntime and `module` (see `check`); NaN when any
    difference is NaN or an output is not finite."""
    return check(graph, module, data, sizes).max_abs


def check(graph: Graph, module: Any, data: bytes, sizes: dict[str, int] | None = None,
          atol: float = ATOL, rtol: float = RTOL) -> Closeness:
    """Run the ONNX file with onnxruntime and `module` on the same random inputs (by default at
    other sizes than the export's, which exercises the dynamic axes): how close the outputs are,
    |onnx - torch| <= atol + rtol * |torch| (archc.numeric; a NaN is never close)."""
    try:
        import onnxruntime
    except ImportError:
        raise ArchError("checking an ONNX file needs onnxruntime: pip install onnxruntime") from None
    import torch

    from archc.backends.torch.inputs import example_inputs

    inputs = example_inputs(graph, sizes or {"B": 3, "T": 9}, seed=1)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(port_names(graph)[0], inputs)})
    with torch.no_grad():
        want = module.eval()(*inputs)
    want = want if isinstance(want, (tuple, list)) else (want,)
    if len(got) != len(want):
        return Closeness(atol, rtol, shape_mismatch=f"{len(got)} outputs vs {len(want)}")
    return compare([(torch.from_numpy(g), w) for g, w in zip(got, want)], atol=atol, rtol=rtol)


__all__ = ["check", "export_onnx", "max_diff", "port_names"]
