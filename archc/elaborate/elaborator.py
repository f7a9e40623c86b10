"""Elaborate a model: evaluate its body, instantiating blocks and emitting typed op nodes.

Blocks are instantiated where they are applied, with the real types of their inputs, so every
shape is known (or symbolic, for axes such as B and T) before anything runs. Expansion is bounded:
a spec that would unroll past `Limits` fails with an error at the statement that did it.

The elaborator is one interpreter made of parts, each in its own file, by what it does:

    state.py        what has been made so far (values, op nodes, parameters, scopes) and the limits
    statements.py   assignments and instance names, return, if, for, statement annotations
    expressions.py  names, constants, arithmetic, indexing, pipelines
    calls.py        what a call means, and applying any callable to tensors
    blocks.py       block application: parameters, signatures, bodies, interface slots
    nodes.py        op nodes: result types, parameters, initializers, dtypes, guards
    stacks.py       stacks, and stacks wired by a connection policy
    moe.py          mixtures whose expert is any block: moe(E, Block)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from archc import guards
from archc.elaborate.blocks import Blocks
from archc.elaborate.builtins import NAMES as BUILTINS
from archc.elaborate.calls import Calls
from archc.elaborate.dtypes import check_build_dtype
from archc.elaborate.expressions import _FRAMES_PER_NESTING, MAX_NESTING, Expressions, too_deep
from archc.elaborate.loader import Loader, ModuleEnv
from archc.elaborate.moe import Mixtures
from archc.elaborate.nodes import Nodes, check_tensor_type
from archc.elaborate.stacks import Stacks
from archc.elaborate.state import Limits, jsonable
from archc.elaborate.statements import Statements
from archc.elaborate.unify import Pattern
from archc.elaborate.values import BlockTemplate, Frame, Tensor
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text
from archc.ir.blocks import annotate
from archc.ir.graph import Graph, Guard, Port
from archc.ir.types import TensorType
from archc.ops.registry import OpError
from archc.recursion import headroom
from archc.sizes import Size, parse_size


class Elaborator(Statements, Expressions, Calls, Blocks, Nodes, Stacks, Mixtures):
    """Evaluates a model's body into IR (see the module docstring for its parts)."""

    def model(self, env: ModuleEnv, name: str | None, overrides: dict[str, Any]) -> Graph:
        models = [b for b in env.blocks() if b.kind == "model"]
        if name is not None:
            chosen = next((b for b in env.blocks() if b.name == name), None)
            if chosen is None:
                close = did_you_mean(name, [b.name for b in env.blocks()])
                near = next((b.name_span for b in env.blocks() if close and f"'{b.name}'" in close), None)
                raise ArchError(f"this file defines no model or block '{name}'", near or Span(env.file, 1, 1),
                                close)
        elif len(models) == 1:
            chosen = models[0]
        elif not models:
            first = env.blocks()[0].name_span if env.blocks() else None
            raise ArchError("this file defines no model", first or Span(env.file, 1, 1),
                            "declare the entry point with 'model Name(...) (inputs) -> outputs { ... }'")
        else:
            raise ArchError(f"this file defines {len(models)} models ({', '.join(m.name for m in models)})",
                            models[1].name_span, "choose one with --model NAME",
                            notes=[("the first model is here", models[0].name_span)])
        template = BlockTemplate(chosen, env)
        unknown = set(overrides) - {p.name for p in chosen.params}
        if unknown:
            bad = sorted(unknown)[0]
            raise ArchError(f"model '{chosen.name}' has no parameter '{bad}'", chosen.name_span,
                            did_you_mean(bad, [p.name for p in chosen.params]))
        root = Frame(module=env, scope="")
        types = {f.name: getattr(f.type, "name", "") for f in chosen.params}
        overrides = {k: self.eval(_as_expr(v, types.get(k, "")), root) for k, v in overrides.items()}
        fn = self.construct(template, (), overrides, chosen.name_span or chosen.span)
        frame = self.block_frame(fn, "")
        ports, outs = self.signature(chosen, env)
        bindings: dict[str, Size] = {}
        inputs: list[Tensor] = []
        for port in ports:
            t = Pattern(port.type, self.size_lookup(frame), env.axes).fresh(bindings)  # type: ignore[arg-type]
            if port.type.dtype is None:  # type: ignore[union-attr]
                t = TensorType(dtype=self.dtype, shape=t.shape)  # an input without a dtype: the build's
            try:
                check_tensor_type(t, f"input '{port.name}'")
            except OpError as err:
                raise ArchError(err.message, port.span, err.hint) from None
            tensor = self.new_value(t)
            inputs.append(tensor)
            frame.vars[port.name] = tensor
        for axis, size in bindings.items():
            frame.vars.setdefault(axis, size.value if size.is_const else size)
        results = self.run_block(fn, frame, inputs, chosen.span, bindings)
        _check_guards(self.guards.values(), [t.type for t in inputs])
        return annotate(Graph(
            name=chosen.name,
            axes=tuple(sorted({a for t in (self.values[i.id] for i in inputs) for s in t.sizes for a in s.atoms()})),
            model_args={k: jsonable(v) for k, v in fn.params.items()},
            inputs=tuple(Port(name=p.name, value=t.id, type=t.type) for p, t in zip(ports, inputs)),
            outputs=tuple(Port(name=f"out{i}" if len(results) > 1 else "out", value=t.id, type=t.type)
                          for i, t in enumerate(results)),
            values=self.values, nodes=tuple(self.nodes), params=self.params, scopes=self.scopes,
            guards=tuple(self.guards.values())))


def _as_expr(v: Any, type_name: str) -> Any:
    """An override as given: an expression, or a Python value; text for a parameter that is not a
    str is an .arch expression (`connect="hyper(n=4)"` from Python, as on the command line)."""
    if isinstance(v, str) and type_name != "str":
        from archc.frontend.parser import parse_expr

        return parse_expr(v, file="<override>")
    if _is_expr(v):
        return v
    return A.Const(v, Span("<override>", 1, 1)) if not isinstance(v, (list, tuple)) else \
        A.ListExpr(tuple(_as_expr(x, "") for x in v), Span("<override>", 1, 1))


def _is_expr(v: Any) -> bool:
    return type(v).__module__ == A.__name__ and hasattr(v, "span")


def elaborate_file(path: str | Path, model: str | None = None, overrides: dict[str, Any] | None = None,
                   includes: list[Path] | None = None, limits: Limits | None = None, dtype: str = "f32") -> Graph:
    return _elaborate(lambda: Loader(includes).load_path(Path(path)), model, overrides, limits, dtype)


def elaborate_text(text: str, file: str = "<string>", model: str | None = None,
                   overrides: dict[str, Any] | None = None, includes: list[Path] | None = None,
                   limits: Limits | None = None, folder: Path | None = None, dtype: str = "f32") -> Graph:
    return _elaborate(lambda: Loader(includes).load_text(text, file, folder), model, overrides, limits, dtype)


def elaborate_module(module: A.Module, loader: Loader, file: str, folder: Path, model: str | None = None) -> Graph:
    """A module already parsed, with a loader that may be shared (each import read once): a search
    space's probes (archc/space_probe.py)."""
    return _elaborate(lambda: loader.load_module(module, file, folder), model, None, None, "f32")


def _elaborate(load: Callable[[], ModuleEnv], model: str | None, overrides: dict[str, Any] | None,
               limits: Limits | None, dtype: str) -> Graph:
    elaborator = Elaborator(limits, check_build_dtype(dtype))
    try:
        with headroom(_FRAMES_PER_NESTING * MAX_NESTING + 500):  # imports nest at most 256 deep
            return elaborator.model(load(), model, overrides or {})
    except RecursionError:  # a last resort: MAX_NESTING comes first
        raise too_deep(elaborator) from None


def _check_guards(found: Iterable[Guard], inputs: list[TensorType]) -> None:
    """A guard reads its axes from the model's inputs: each must be a whole axis of one (or a
    multiple of it, as in [B, 2*K])."""
    given = guards.given_axes(inputs)
    for g in found:
        missing = sorted(parse_size(g.size).atoms() - given.keys())
        if missing:
            raise ArchError(f"{g.why}: {g.condition}, which only the run time can check, and no input of the model "
                            f"gives the axis '{missing[0]}' as it is", g.span.to_span() if g.span else None,
                            "give the model an input whose type names the axis")


__all__ = ["BUILTINS", "MAX_NESTING", "Elaborator", "Limits", "elaborate_file", "elaborate_text", "expr_text"]
