"""The IR verifier: a graph is valid when every value is defined once before use, every node's
attributes, output types and parameters agree with its op's rules, and the outputs exist.
Runs after every pass in the tests.

`load_json` is how an IR file from outside is read (`archc ir --load`): strict JSON (no NaN or
infinity anywhere), strict field types (`schema_version` is the int 2, never "2" or true), bounded
sizes and counts (so that checking a file is bounded work), then `verify`. Every problem is an
`InvalidIR` (a ValueError) with one line that says what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from archc import guards
from archc.ir import sparsity
from archc.ir.blocks import block_calls
from archc.ir.graph import Graph, Node
from archc.ir.types import DTYPES, FLOAT_DTYPES
from archc.ops import registry
from archc.ops.dtypes import follow_dtype
from archc.ops.registry import OpError, ParamSpec, check_init
from archc.sizes import MAX_INT, SizeError, parse_size


class VerifyError(Exception):
    """The IR is malformed: a bug in a pass or a hand-edited IR file, not a spec mistake."""


class InvalidIR(ValueError):
    """An IR file that cannot be loaded: the message says the first thing wrong with it."""


# What an IR file may hold, beyond what `verify` checks (the elaborator's own limits are lower or equal).
MAX_NODES = 50_000  # the default --max-nodes (the largest zoo model has 212 ops)
MAX_PARAMS = 10**11  # parameter elements, as archc.elaborate.Limits.max_params
MAX_RANK = 64
MAX_TYPE_TERMS = 256  # the product over a type's axes of their sizes' terms: what flattening it multiplies out to
MAX_NESTING = 100  # JSON arrays and objects inside one another
VALUE_ID = re.compile(r"%[0-9]+")


def load_json(text: str | bytes, max_nodes: int = MAX_NODES, max_params: int = MAX_PARAMS) -> Graph:
    """Load and verify an IR file's text; raises InvalidIR (never anything else) when it is not
    a valid archc IR file."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        raw = json.loads(text, parse_constant=_no_constant)
        _check_raw(raw)
        graph = Graph.model_validate_json(text, strict=True)  # 8 is not "8", true is not 1
        _check_attrs_as_written(raw, graph)
        check_loaded(graph, max_nodes=max_nodes, max_params=max_params)
        verify(graph)
    except InvalidIR:
        raise
    except (VerifyError, UnicodeDecodeError) as e:
        raise InvalidIR(str(e)) from None
    except ValueError as e:  # pydantic's ValidationError and json's JSONDecodeError among them
        raise InvalidIR(_first_problem(e)) from None
    except RecursionError:
        raise InvalidIR("it is nested too deeply") from None
    except Exception as e:  # noqa: BLE001  an op rule tripping over a file no spec makes: still the file's fault
        raise InvalidIR(f"{type(e).__name__}: {e}") from None
    return graph


def _no_constant(name: str) -> Any:
    raise InvalidIR(f"it holds {name}, which is not a number in an IR file (every size and attribute is finite)")


def _first_problem(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic: say the first problem, and where
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {msg}" if where else msg
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _check_raw(raw: Any) -> None:
    """No float that is not finite (`1e999` reads as infinity), and bounded nesting."""
    stack: list[tuple[Any, int]] = [(raw, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            raise InvalidIR(f"it nests lists and objects deeper than {MAX_NESTING}")
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidIR(f"it holds the number {item}, which is not finite")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, kinds included: 1 is not true and "8" is not 8 (an int may stand for a float)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b and not (isinstance(a, float) and isinstance(b, int))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _check_attrs_as_written(raw: dict[str, Any], graph: Graph) -> None:
    """Each attribute a file gives is already in the op's canonical form: `"features": "8"` or
    `"bias": 1` are refused, not converted (attributes an op defaults may be left out)."""
    for i, (written, node) in enumerate(zip(raw["nodes"], graph.nodes)):
        for key, value in written.get("attrs", {}).items():
            if not _same(value, node.attrs.get(key)):
                raise InvalidIR(f"node {i} ({node.op}): attribute '{key}' is {json.dumps(value)}, "
                                f"which is not the op's {json.dumps(node.attrs.get(key))}")


def check_loaded(graph: Graph, max_nodes: int = MAX_NODES, max_params: int = MAX_PARAMS) -> None:
    """What a loaded file must also be, before `verify` runs its op rules: bounded in size,
    values named `%N`, known dtypes, no negative axis, parameters of sane shapes and initializers."""
    if len(graph.nodes) > max_nodes:
        raise InvalidIR(f"it has {len(graph.nodes):,} nodes, more than the limit {max_nodes:,} (--max-nodes)")
    for vid, t in graph.values.items():
        if not VALUE_ID.fullmatch(vid):
            raise InvalidIR(f"value {vid!r} is not named %N")
        _check_type(t, f"value {vid}")
    for p in (*graph.inputs, *graph.outputs):
        _check_type(p.type, f"port '{p.name}'")
        if not VALUE_ID.fullmatch(p.value):
            raise InvalidIR(f"port '{p.name}': value {p.value!r} is not named %N")
    for node in graph.nodes:
        for v in (*node.inputs, *node.outputs):
            if v not in graph.values:
                raise InvalidIR(f"node {node.op} at scope '{node.scope}': value {v} has no type in 'values'")
    given = guards.given_axes(p.type for p in graph.inputs)
    for g in graph.guards:
        try:
            size = parse_size(g.size) if len(g.size) <= 1000 else None
        except SizeError:
            size = None
        if size is None or not guards.guardable(size) or g.bound > MAX_INT:
            raise InvalidIR(f"guard {g.size[:40]!r}: not a symbolic size of the model's axes with a bound up to 2**62")
        if size.atoms() - given.keys():
            raise InvalidIR(f"guard {g.size!r}: no input gives the axis '{sorted(size.atoms() - given.keys())[0]}'")
    total = 0
    for name, decl in graph.params.items():
        if decl.name != name:
            raise InvalidIR(f"parameter '{name}' is declared under the name '{decl.name}'")
        if decl.dtype not in DTYPES:
            raise InvalidIR(f"parameter '{name}': unknown dtype '{decl.dtype}'")
        if len(decl.shape) > MAX_RANK or any(not 0 <= s <= MAX_INT for s in decl.shape):
            raise InvalidIR(f"parameter '{name}' has the shape {list(decl.shape)[:8]}: "
                            f"axes must be sizes from 0 to 2**62, at most {MAX_RANK} of them")
        total += decl.numel
        if total > max_params:
            raise InvalidIR(f"its parameters have more than {max_params:,} elements")
        try:
            check_init(decl.init)
        except ValueError as e:
            raise InvalidIR(f"parameter '{name}': {e}") from None


def _check_type(t: Any, what: str) -> None:
    if t.dtype not in DTYPES:
        raise InvalidIR(f"{what}: unknown dtype '{t.dtype}' (the dtypes are {', '.join(DTYPES)})")
    if t.rank > MAX_RANK:
        raise InvalidIR(f"{what}: rank {t.rank} is above {MAX_RANK}")
    terms = 1
    for size in t.sizes:
        if size.is_const and size.terms.get((), 0) < 0:
            raise InvalidIR(f"{what}: the axis size {size} is negative")
        terms *= max(1, len(size.terms))
        if terms > MAX_TYPE_TERMS:
            raise InvalidIR(f"{what}: its sizes multiply out to more than {MAX_TYPE_TERMS} terms")


def _with_mask(node: Node, specs: dict[str, ParamSpec], where: str) -> dict[str, ParamSpec]:
    """The tensors a node owns: its op's, and a `weight_mask` when it is @sparse."""
    try:
        s = sparsity.of(node)
        if s is None:
            return specs
        if node.op not in sparsity.SPARSE_OPS or "weight" not in specs:
            raise ValueError(f"@sparse on {node.op}, which has no weight with a reduction axis")
        sparsity.check_weight(s, node.op, specs["weight"].shape)
    except ValueError as e:
        raise VerifyError(f"{where}: {e}") from None
    return {**specs, sparsity.MASK: ParamSpec(specs["weight"].shape, s.init, trainable=False, dtype="bool")}


def verify(graph: Graph) -> Graph:
    defined: set[str] = set()
    for p in graph.inputs:
        if p.value in defined:
            raise VerifyError(f"input '{p.name}': value {p.value} is defined twice")
        defined.add(p.value)
        if graph.values.get(p.value) != p.type:
            raise VerifyError(f"input '{p.name}' has type {p.type} but its value says {graph.values.get(p.value)}")
    used_params: set[str] = set()
    recorded = {(g.size, g.kind, g.bound) for g in graph.guards}
    for i, node in enumerate(graph.nodes):
        where = f"node {i} ({node.op} at scope '{node.scope}')"
        for v in node.inputs:
            if v not in defined:
                raise VerifyError(f"{where}: input {v} is used before it is defined")
        if not registry.has(node.op):
            raise VerifyError(f"{where}: unknown op")
        op = registry.get(node.op)
        if len(node.inputs) < op.min_inputs or (op.max_inputs is not None and len(node.inputs) > op.max_inputs):
            takes = (f"{op.min_inputs} or more" if op.max_inputs is None else str(op.max_inputs)
                     if op.min_inputs == op.max_inputs else f"{op.min_inputs} to {op.max_inputs}")
            raise VerifyError(f"{where}: {len(node.inputs)} inputs, the op takes {takes}")
        try:
            attrs = op.make_attrs(node.attrs)
            types = [graph.values[v] for v in node.inputs]
            with guards.collecting() as needs:
                outs = op.infer(attrs, types)
            specs = op.params(attrs, types)
        except (OpError, SizeError, KeyError) as e:
            raise VerifyError(f"{where}: {e}") from None
        for size, kind, bound, _ in needs:
            if (str(size), kind, bound) not in recorded:
                raise VerifyError(f"{where}: needs the run-time guard '{guards.text(kind, str(size), bound)}', "
                                  "which the graph does not record")
        specs = _with_mask(node, specs, where)
        floats = {graph.params[p].dtype for p in node.params.values() if p in graph.params} & set(FLOAT_DTYPES)
        specs, outs = follow_dtype(specs, outs, types, attrs, floats.pop() if len(floats) == 1 else "f32")
        if len(outs) != len(node.outputs):
            raise VerifyError(f"{where}: {len(node.outputs)} outputs, the op makes {len(outs)}")
        for v, t in zip(node.outputs, outs):
            if v in defined:
                raise VerifyError(f"{where}: value {v} is defined twice")
            if graph.values.get(v) != t:
                raise VerifyError(f"{where}: output {v} is typed {graph.values.get(v)}, the op infers {t}")
            defined.add(v)
        if set(specs) != set(node.params):
            raise VerifyError(f"{where}: uses parameters {sorted(node.params)}, the op owns {sorted(specs)}")
        for role, name in node.params.items():
            decl = graph.params.get(name)
            if decl is None or decl.shape != specs[role].shape:
                raise VerifyError(f"{where}: parameter '{name}' is {decl and list(decl.shape)}, "
                                  f"the op needs {list(specs[role].shape)}")
            if decl.dtype != specs[role].dtype and role != sparsity.MASK:
                raise VerifyError(f"{where}: parameter '{name}' is {decl.dtype}, the op makes it {specs[role].dtype}")
            if role == sparsity.MASK and (decl.dtype != "bool" or decl.trainable):
                raise VerifyError(f"{where}: the mask '{name}' must be a bool buffer")
            used_params.add(name)
    for p in graph.outputs:
        if p.value not in defined:
            raise VerifyError(f"output '{p.name}' ({p.value}) is never defined")
        if graph.values[p.value] != p.type:
            raise VerifyError(f"output '{p.name}' has type {p.type} but its value says {graph.values[p.value]}")
    unused = set(graph.params) - used_params
    if unused:
        raise VerifyError(f"parameters no node uses: {sorted(unused)[:5]}")
    found = block_calls(graph)
    for path, info in graph.scopes.items():
        if (info.calls, info.key) != found.get(path, ((), "")):
            raise VerifyError(f"scope '{path}': its recorded block structure is not the graph's "
                              "(a pass that changes nodes must be followed by archc.ir.blocks.annotate, as Editor.finish does)")
    return graph
