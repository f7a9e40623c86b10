"""``archc.import_module(module, example_inputs)``: a PyTorch module as the ``.arch`` spec a person
would write, whose parameter names are the module's ``state_dict`` keys (issue #19; docs/import.md).

The main path captures the module with ``torch.export`` (archc/importer_export.py) and emits blocks,
instances and expressions from its ATen graph and module stack (archc/importer_aten.py). When
``torch.export`` cannot capture the forward, or its spec fails the check, the older path below runs:
``torch.fx`` one level at a time, the direct children kept whole, a child that is a known layer
becoming an op instance, any other a ``block``, an ``nn.Sequential`` child a ``stack``.

Whichever path gives the text, it is checked before it is returned: the spec is built, the
module's ``state_dict`` loads into it with ``strict=True``, and its outputs on the example inputs
match the module's within ``rtol = atol = 1e-5`` (eval mode). What cannot be mapped is an ArchError
naming the module and what stopped it (the first path's reason); nothing is returned then.
"""

from __future__ import annotations

import keyword
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from archc.errors import ArchError
from archc.importer_export import RESERVED, Blocks, Unmapped, call, export_spec_text, fmt, spec_text, stack_text

__all__ = ["import_module"]

TOLERANCE = 1e-5


def _leaf_ops() -> dict[type, Callable[[Any], str]]:
    """nn.Module class -> the op instance that computes it (with the same parameters)."""
    from torch import nn

    def conv(m: Any) -> str:
        if m.padding_mode != "zeros":
            raise _Unmapped(f"padding_mode={m.padding_mode!r}")
        padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        if padding == "valid":
            padding = 0
        return call("conv2d", m.out_channels, tuple(m.kernel_size), stride=tuple(m.stride), padding=padding,
                     dilation=tuple(m.dilation), groups=m.groups, bias=m.bias is not None,
                     defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True})

    def batchnorm(m: Any) -> str:
        if not m.track_running_stats or m.momentum is None:
            raise _Unmapped("a BatchNorm without running statistics or with momentum=None")
        return call("batchnorm", eps=float(m.eps), momentum=float(m.momentum), affine=bool(m.affine),
                     defaults={"eps": 1e-5, "momentum": 0.1, "affine": True})

    def layernorm(m: Any) -> str:
        if len(m.normalized_shape) != 1:
            raise _Unmapped(f"normalized_shape={tuple(m.normalized_shape)} (archc's layernorm normalizes one axis)")
        return call("layernorm", eps=float(m.eps), affine=bool(m.elementwise_affine), bias=m.bias is not None,
                     defaults={"eps": 1e-5, "affine": True, "bias": True})

    def gelu(m: Any) -> str:
        return call("gelu", approximate=m.approximate, defaults={"approximate": "none"})

    def flatten(m: Any) -> str:
        return call("flatten", start=m.start_dim, end=m.end_dim, defaults={"start": 1, "end": -1})

    def pool(m: Any) -> str:
        kind = "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d"
        if kind == "maxpool2d" and (m.return_indices or fmt(m.dilation) != "1"):
            raise _Unmapped("return_indices or dilation (archc's maxpool2d has neither)")
        if kind == "avgpool2d" and m.divisor_override is not None:
            raise _Unmapped("divisor_override")
        stride = m.stride if m.stride is not None else m.kernel_size
        include = getattr(m, "count_include_pad", True)
        return call(kind, m.kernel_size, stride=stride, padding=m.padding, ceil_mode=bool(m.ceil_mode),
                     count_include_pad=bool(include),
                     defaults={"stride": m.kernel_size, "padding": 0, "ceil_mode": False, "count_include_pad": True})

    def adaptive(m: Any) -> str:
        size = m.output_size
        if size is None or (isinstance(size, tuple) and None in size):
            raise _Unmapped("an output size of None")
        return call("adaptive_avgpool2d", size)

    def softmax(m: Any) -> str:
        if m.dim is None:
            raise _Unmapped("Softmax without dim")
        return call("softmax", dim=m.dim)

    return {
        nn.Linear: lambda m: call("linear", m.out_features, bias=m.bias is not None, defaults={"bias": True}),
        nn.Conv2d: conv, nn.BatchNorm1d: batchnorm, nn.BatchNorm2d: batchnorm, nn.LayerNorm: layernorm,
        nn.ReLU: lambda m: "relu()", nn.GELU: gelu, nn.SiLU: lambda m: "silu()", nn.Tanh: lambda m: "tanh()",
        nn.Sigmoid: lambda m: "sigmoid()", nn.Identity: lambda m: "identity()",
        nn.Dropout: lambda m: f"dropout({fmt(float(m.p))})", nn.Flatten: flatten, nn.Softmax: softmax,
        nn.MaxPool2d: pool, nn.AvgPool2d: pool, nn.AdaptiveAvgPool2d: adaptive,
    }


def _functions() -> dict[Any, str]:
    """A function (or a Tensor method's name) applied to one tensor -> the archc op."""
    import torch
    import torch.nn.functional as F

    table: dict[Any, str] = {}
    for name in ("relu", "gelu", "silu", "tanh", "sigmoid"):
        for owner in (torch, F):
            if hasattr(owner, name):
                table[getattr(owner, name)] = name
        table[name] = name  # x.relu()
    return table


_Unmapped = Unmapped  # one kind of "cannot express yet", whichever path raises it


@dataclass
class _Spec:
    blocks: Blocks = field(default_factory=lambda: Blocks(frozenset(RESERVED)))


def _type(shape: Sequence[int]) -> str:
    if not shape:
        raise _Unmapped("a scalar (0-d) tensor")
    return "[" + ", ".join(["B", *(str(int(d)) for d in shape[1:])]) + "]"


def _shape(node: Any) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _Unmapped(f"'{node.name}' is not one tensor")
    return tuple(meta.shape)


def _trace(module: Any, inputs: Sequence[Any]) -> Any:
    """The module's graph with its direct children kept whole, each node's output shape recorded."""
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    class ChildrenAreLeaves(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return "." not in qualname or super().is_leaf_module(m, qualname)  # a torch.nn layer in a list

    try:
        graph = ChildrenAreLeaves().trace(module)
    except Exception as err:  # noqa: BLE001  (fx raises many kinds for untraceable code)
        raise _Unmapped(f"torch.fx cannot trace its forward: {str(err).strip().splitlines()[0]}") from None
    gm = fx.GraphModule(module, graph)
    try:
        ShapeProp(gm).propagate(*inputs)
    except Exception as err:  # noqa: BLE001  (the module's own forward fails on these inputs)
        raise _Unmapped(f"its forward fails on the example inputs: {str(err).strip().splitlines()[0]}") from None
    return gm


def _body(module: Any, inputs: Sequence[Any], spec: _Spec, where: str) -> tuple[str, list[str]]:
    """(signature, lines) of `module` as a block body: its children's instances first, then the
    dataflow, a value used once folded into the expression that uses it (``x >> fc1 >> act``)."""
    gm = _trace(module, inputs)
    children = dict(module.named_children())
    for name in children:
        if not name.isidentifier() or name in RESERVED:
            raise _Unmapped(f"the child '{name}' (its state_dict keys '{name}.*' are not a name a spec can give; "
                            "nn.Sequential and ModuleList come in a later step)")
    flow = _Flow(set(children) | RESERVED)
    instances: list[str] = []
    params: list[str] = []
    for node in gm.graph.nodes:
        at = f"{where}.{node.target}" if where else str(node.target)
        if node.op == "placeholder":
            params.append(f"{flow.define(node, node.name, always=True)}: {_type(_shape(node))}")
        elif node.op == "call_module":
            if node.target not in children:  # traced into a container's layer (a ModuleList loop)
                raise _Unmapped(f"'{where + '.' if where else ''}{node.target}' is called inside a container "
                                "(nn.ModuleList or nn.ModuleDict): not imported yet")
            if len(node.args) != 1 or node.kwargs:
                raise _Unmapped(f"'{at}' is called with {len(node.args)} arguments (one tensor only, for now)")
            instances.append(f"{node.target} = {_instance(children[node.target], node, spec, at)}")
            flow.define(node, f"{flow.pipe_operand(node.args[0])} >> {node.target}")
        elif node.op in ("call_function", "call_method"):
            flow.define(node, _function(node, flow, where))
        elif node.op == "get_attr":
            raise _Unmapped(f"'{at}' is a tensor used directly (a bare parameter or buffer): not imported yet")
        elif node.op == "output":
            if not hasattr(node.args[0], "name"):
                raise _Unmapped(f"{where or 'the model'} returns {type(node.args[0]).__name__}, not one tensor")
            flow.lines.append(f"return {flow.use(node.args[0])}")
            signature = "(" + ", ".join(params) + f") -> {_type(_shape(node.args[0]))}"
    return signature, instances + flow.lines


class _Flow:
    """The dataflow lines of a body: a value used once is kept as an expression for its user."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)
        self.exprs: dict[str, str] = {}  # fx node name -> the expression (or name) that is its value
        self.lines: list[str] = []

    def define(self, node: Any, expr: str, always: bool = False) -> str:
        uses = sum(list(user.args).count(node) + list(user.kwargs.values()).count(node) for user in node.users)
        if always or uses != 1:
            name = node.name
            while name in self.taken or keyword.iskeyword(name):
                name += "_"
            self.taken.add(name)
            if not always:
                self.lines.append(f"{name} = {expr}")
            expr = name
        self.exprs[node.name] = expr
        return expr

    def use(self, value: Any) -> str:
        if hasattr(value, "name") and value.name in self.exprs:
            return self.exprs[value.name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return fmt(value)
        raise _Unmapped(f"the argument {value!r}")

    def pipe_operand(self, value: Any) -> str:
        return self.use(value)  # `>>` binds loosest: `a + b >> f` is `(a + b) >> f`

    def operand(self, value: Any, op: str) -> str:
        """An operand of `+` or `*`: a pipeline (or a sum under `*`) in parentheses."""
        text = self.use(value)
        return f"({text})" if ">>" in text or (op == "*" and (" + " in text or " - " in text)) else text


def _instance(child: Any, node: Any, spec: _Spec, at: str) -> str:
    """The declaration of a child: an op instance, a block instance, or a stack (nn.Sequential)."""
    import torch

    example = torch.randn(_shape(node.args[0]), generator=torch.Generator().manual_seed(0))
    return _layer(child, example, spec, at)


def _layer(child: Any, example: Any, spec: _Spec, at: str) -> str:
    import torch

    leaves = _leaf_ops()
    if type(child) in leaves:
        try:
            return leaves[type(child)](child)
        except _Unmapped as err:
            raise _Unmapped(f"'{at}' ({type(child).__name__}): {err}") from None
    if type(child) is torch.nn.Sequential:
        return _sequential(child, example, spec, at)
    if isinstance(child, torch.nn.ModuleList | torch.nn.ModuleDict | torch.nn.Sequential):
        raise _Unmapped(f"'{at}' is an nn.{type(child).__name__}: not imported yet")
    if type(child).__module__.startswith("torch."):  # a PyTorch layer the table above does not have
        raise _Unmapped(f"'{at}' is an nn.{type(child).__name__}, which has no archc op (yet)")
    return f"{_block(child, [example], spec, at)}()"


def _sequential(seq: Any, example: Any, spec: _Spec, at: str) -> str:
    """An nn.Sequential as a stack, whose layers are named 0, 1, ... as the Sequential's:
    ``stack(n) { Layer() }`` when the layers are alike, else one per index (``i => if i == 0 ...``)."""
    import torch

    names = [name for name, _ in seq.named_children()]
    if names and all(name.isidentifier() and name not in RESERVED for name in names):  # named layers: a block
        return f"{_block(seq, [example], spec, at)}()"
    if names != [str(i) for i in range(len(names))]:
        raise _Unmapped(f"'{at}' is an nn.Sequential with layers named {', '.join(names)}: not imported yet")
    if not names:
        return "identity()"
    texts = []
    for i, layer in enumerate(seq):
        texts.append(_layer(layer, example, spec, f"{at}.{i}"))
        try:
            example = layer(example)
        except Exception as err:  # noqa: BLE001  (the module's own layer fails)
            raise _Unmapped(f"'{at}.{i}' fails on its input: {str(err).strip().splitlines()[0]}") from None
        if not isinstance(example, torch.Tensor):
            raise _Unmapped(f"'{at}.{i}' does not return one tensor")
    return stack_text(texts)


def _function(node: Any, flow: _Flow, where: str) -> str:
    """The expression of a function or method applied between the children."""
    import torch

    target, args = node.target, node.args
    if target in (operator.add, torch.add, "add") and len(args) == 2 and not node.kwargs:
        return f"{flow.operand(args[0], '+')} + {flow.operand(args[1], '+')}"
    if target in (operator.mul, torch.mul, "mul") and len(args) == 2 and not node.kwargs:
        return f"{flow.operand(args[0], '*')} * {flow.operand(args[1], '*')}"
    if target in (torch.flatten, "flatten") and not node.kwargs and all(isinstance(a, int) for a in args[1:]):
        start, end = (list(args[1:]) + [0, -1][len(args) - 1:])[:2]
        return f"{flow.pipe_operand(args[0])} >> {call('flatten', start=start, end=end, defaults={'start': 1, 'end': -1})}"
    functions = _functions()
    if _hashable(target) and target in functions and len(args) == 1 and set(node.kwargs) <= {"inplace", "approximate"}:
        approx = node.kwargs.get("approximate", "none")
        op = call(functions[target], approximate=approx, defaults={"approximate": "none"})
        return f"{flow.pipe_operand(args[0])} >> {op}"
    what = getattr(target, "__name__", str(target))
    raise _Unmapped(f"the call {what}(...) in the forward of {where or 'the model'} has no archc op (yet)")


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _block(module: Any, inputs: Sequence[Any], spec: _Spec, where: str) -> str:
    """The name of the block that `module` is (defined once per distinct body)."""
    signature, lines = _body(module, inputs, spec, where)
    body = signature + " {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
    return spec.blocks.define(type(module).__name__ if type(module).__name__.isidentifier() else "Block", body)


def _spec_text(module: Any, inputs: Sequence[Any], source: str | None = None) -> str:
    spec = _Spec()
    signature, lines = _body(module, inputs, spec, "")
    name = type(module).__name__ if type(module).__name__.isidentifier() else "Imported"
    model = f"model {name} {signature} {{\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
    source = source or f"{type(module).__module__}.{type(module).__qualname__}"
    return spec_text(source, ["B"], spec.blocks.texts, model)


def import_module(module: Any, example_inputs: Sequence[Any] | Any, source: str | None = None) -> str:
    """The `.arch` text of `module` (an ``nn.Module``), verified on `example_inputs` (a tensor or a
    sequence of tensors): the spec builds, ``module.state_dict()`` loads into it with
    ``strict=True``, and the outputs match within rtol = atol = 1e-5 in eval mode. Raises ArchError
    for what cannot be imported yet, naming the module and why; nothing is returned then. `source`
    names where the module came from in the text's first line (its class's module by default)."""
    import torch

    inputs = [example_inputs] if isinstance(example_inputs, torch.Tensor) else list(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.int64) for t in inputs):
        raise ArchError("import_module needs example inputs that are float32 (or int64) tensors")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            try:
                module(*inputs)
            except Exception as err:  # noqa: BLE001  (the module's own forward fails on these inputs)
                raise ArchError(f"cannot import {type(module).__name__}: its forward fails on the example inputs: "
                                f"{type(err).__name__}: {str(err).strip().splitlines()[0]}") from None
            text = _import(module, inputs, source or f"{type(module).__module__}.{type(module).__qualname__}")
    finally:
        module.train(was_training)
    return text


def _import(module: Any, inputs: Sequence[Any], source: str) -> str:
    """The verified text: from torch.export's graph, or else from torch.fx's (one level at a time)."""
    try:
        text = export_spec_text(module, inputs, source)
    except Unmapped as err:
        first: Exception = err
    else:
        try:
            _verify(module, inputs, text)
            return text
        except ArchError as err:
            first = err
    try:
        text = _spec_text(module, inputs, source)
    except Exception:  # noqa: BLE001  (the fallback's failure is not the message: the first one is)
        text = ""
    if text:
        try:
            _verify(module, inputs, text)
            return text
        except ArchError:
            pass
    if isinstance(first, ArchError):
        raise first
    raise ArchError(f"cannot import {type(module).__name__}: {first}") from None


def _verify(module: Any, inputs: Sequence[Any], text: str) -> None:
    import torch

    from archc.api import build
    from archc.elaborate import elaborate_text

    name = f"{type(module).__name__}.arch"
    try:
        built = build(elaborate_text(text, name)).eval()
    except ArchError as err:
        raise ArchError(f"the spec imported from {type(module).__name__} does not compile (a bug in the "
                        f"importer):\n{err.render()}") from None
    try:
        built.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as err:
        raise ArchError(f"the state_dict of {type(module).__name__} does not load into the imported spec: "
                        f"{str(err).strip().splitlines()[-1]}") from None
    want, got = _tensors(module(*inputs)), _tensors(built(*inputs))
    try:
        torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    except AssertionError as err:
        raise ArchError(f"the imported spec does not compute what {type(module).__name__} computes: "
                        f"{str(err).strip().splitlines()[0]}") from None


def _tensors(value: Any) -> list[Any]:
    """The tensors of a forward's result (a tensor, a tuple, a dict or a ModelOutput), in order."""
    import torch
    from torch.utils._pytree import tree_leaves

    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]
