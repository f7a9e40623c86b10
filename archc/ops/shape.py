"""Ops that move axes: rearrange, einsum, flatten, concat, split, chunk, unbind, select, slice, take."""

from __future__ import annotations

import math
import string
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from archc import guards
from archc.ir.types import Dim, TensorType
from archc.ops.einpattern import Side, expand_ellipsis, expand_right, parse_arrow, parse_side
from archc.ops.registry import Op, OpError, known, norm_dim, register
from archc.sizes import Size, SizeError


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RearrangeAttrs(_Attrs):
    pattern: str
    sizes: dict[str, PositiveInt] = Field(default_factory=dict)


def _solve_rearrange(a: RearrangeAttrs, t: TensorType, op: str,
                     repeat: bool = False) -> tuple[Side, Side, dict[str, Size]]:
    """The two sides of the pattern with `...` expanded, and every axis's size. With `repeat`,
    axes only on the right are new axes whose sizes the keywords give."""
    left_text, right_text = parse_arrow(a.pattern, op)
    left = expand_ellipsis(parse_side(left_text, op), t.rank, op, a.pattern)
    n_ell = t.rank - (len(parse_side(left_text, op).groups) - (1 if parse_side(left_text, op).has_ellipsis else 0))
    right = expand_right(parse_side(right_text, op), n_ell)
    sizes: dict[str, Size] = {k: Size.of(v) for k, v in a.sizes.items()}
    unknown_kw = sorted(set(a.sizes) - set(left.names))
    if unknown_kw and (not repeat or unknown_kw[0] not in right.names):
        name = unknown_kw[0]
        if name in right.names:  # rearrange cannot make an axis: that is repeat's work
            raise OpError(f"{op}: axis '{name}' (given as {name}={a.sizes[name]}) is only on the right of "
                          f"'{a.pattern}'; {op} moves axes and cannot create one",
                          hint=f"to repeat along '{name}', use repeat(x, \"{a.pattern}\", {name}={a.sizes[name]})")
        raise OpError(f"{op}: size given for '{name}', which the pattern '{a.pattern}' does not name")
    for group, dim in zip(left.groups, t.sizes):
        _solve_group(group, dim, sizes, op, a.pattern)
    if not set(left.names) <= set(right.names):
        missing = sorted(set(left.names) - set(right.names))[0]
        raise OpError(f"{op}: axis '{missing}' must appear on both sides of '{a.pattern}'")
    new = sorted(set(right.names) - set(left.names))
    if new and not repeat:
        raise OpError(f"{op}: axis '{new[0]}' must appear on both sides of '{a.pattern}'",
                      hint=f"to repeat along a new axis, use repeat(x, \"{a.pattern}\", {new[0]}=...)")
    for name in new:
        if name not in a.sizes:
            raise OpError(f"{op}: the new axis '{name}' of '{a.pattern}' needs its size",
                          hint=f"give it as a keyword, e.g. {name}=2")
        sizes[name] = Size.of(a.sizes[name])
    return left, right, sizes


def _solve_group(group: tuple[str, ...], dim: Size, sizes: dict[str, Size], op: str, pattern: str) -> None:
    unknown = [n for n in group if n not in sizes]
    product = Size.of(1)
    for n in group:
        if n in sizes:
            product = product * sizes[n]
    if len(unknown) > 1:
        raise OpError(f"{op}: cannot infer both '{unknown[0]}' and '{unknown[1]}' in '{pattern}'",
                      hint=f"give one of them as a keyword, e.g. {unknown[0]}=...")
    if unknown:
        try:
            sizes[unknown[0]] = dim / product
        except SizeError:
            raise OpError(f"{op}: axis of size {dim} cannot be split into ({' '.join(group)}) "
                          f"with {' * '.join(f'{n}={sizes[n]}' for n in group if n in sizes)}") from None
        part = sizes[unknown[0]]
        if not part.is_const and any(not isinstance(c, int) for c in part.terms.values()) and product.is_const \
                and not guards.require(dim, "divisible", product.value, f"split into ({' '.join(group)})"):
            raise OpError(f"{op}: the axis of symbolic size {dim} splits into ({' '.join(group)}) only when it is "
                          f"divisible by {product}, which archc cannot check",
                          hint=f"declare the axis as a multiple, e.g. {product}*K for a new axis K")
    elif product != dim:
        raise OpError(f"{op}: axis ({' '.join(group) or '1'}) has size {product} in '{pattern}', "
                      f"but the input axis has size {dim}")


def _group_size(group: tuple[str, ...], sizes: dict[str, Size]) -> Size:
    out = Size.of(1)
    for n in group:
        out = out * sizes[n]
    return out


def _labelled(t: TensorType, left: Any, right: Any, sizes: Any) -> TensorType:
    """The output type of a rearrange or repeat: an axis that passes through unsplit keeps the
    input's label (B stays B); a new single axis is labelled by its pattern name."""
    carried = {g[0]: d.name for g, d in zip(left.groups, t.shape) if len(g) == 1}
    dims = []
    for g in right.groups:
        label = None
        if len(g) == 1:
            label = carried.get(g[0]) or (None if g[0].startswith("_") else g[0])
        dims.append(Dim(size=_group_size(g, sizes), name=label))
    return TensorType(dtype=t.dtype, shape=tuple(dims))


@register
class Rearrange(Op):
    """einops.rearrange (Rogozhnikov 2022): reshape and transpose by named axes."""

    name = "rearrange"
    Attrs = RearrangeAttrs
    kwargs_field: ClassVar[str] = "sizes"
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        return [_labelled(t, *_solve_rearrange(a, t, self.name))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        x, t = ins[0], types[0]
        left, right, sizes = _solve_rearrange(a, t, self.name)
        runtime: dict[str, str] = {}
        for i, g in enumerate(left.groups):
            for n in g:
                if sizes[n].is_const:
                    runtime[n] = str(sizes[n].value)
            unknown = [n for n in g if n not in runtime]
            if unknown:
                others = math.prod(sizes[n].value for n in g if n in runtime)
                runtime[unknown[0]] = f"{x}.shape[{i}]" + (f" // {others}" if others != 1 else "")
        out = x
        elems = left.names
        if any(len(g) != 1 for g in left.groups):
            out = f"{out}.reshape({', '.join(runtime[n] for n in elems)})"
        order = [elems.index(n) for n in right.names]
        if order != sorted(order):
            out = f"{out}.permute({', '.join(map(str, order))})"
        if any(len(g) != 1 for g in right.groups):
            shape = [" * ".join(runtime[n] for n in g) or "1" for g in right.groups]
            out = f"{out}.reshape({', '.join(shape)})"
        return out


@register
class Repeat(Op):
    """einops.repeat: rearrange, plus new axes of given sizes (copies). `b h t d -> b (h r) t d`
    with `r=2` repeats each head twice in a row, as Hugging Face's `repeat_kv` for grouped-query
    attention (Ainslie et al. 2023)."""

    name = "repeat"
    Attrs = RearrangeAttrs
    kwargs_field: ClassVar[str] = "sizes"
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        return [_labelled(t, *_solve_rearrange(a, t, self.name, repeat=True))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        x, t = ins[0], types[0]
        left, right, sizes = _solve_rearrange(a, t, self.name, repeat=True)
        kept = [n for n in right.names if n in left.names]
        split = {k: v for k, v in a.sizes.items() if k in left.names}
        moved = Rearrange().torch_expr(
            RearrangeAttrs(pattern=f"{_side_text(left)} -> {' '.join(kept)}", sizes=split), [x], params, types)
        # each new axis enters as a size-1 axis (None), then expand makes the copies without memory
        index = ", ".join("None" if n not in left.names else ":" for n in right.names)
        target = ", ".join(str(sizes[n].value) if n not in left.names else "-1" for n in right.names)
        out = f"{_paren(moved)}[{index}].expand({target})"
        if any(len(g) != 1 for g in right.groups):
            shape, inferred = [], False  # one symbolic group is -1; others read their input axis
            for g in right.groups:
                if all(sizes[n].is_const for n in g):
                    shape.append(str(_group_size(g, sizes).value))
                elif not inferred:
                    shape.append("-1")
                    inferred = True
                else:
                    shape.append(" * ".join(str(sizes[n].value) if sizes[n].is_const else
                                            f"{x}.shape[{_axis_of(n, left)}]" for n in g))
            out = f"{out}.reshape({', '.join(shape)})"
        return out


def _side_text(side: Side) -> str:
    return " ".join(g[0] if len(g) == 1 else "(" + " ".join(g) + ")" for g in side.groups)


def _paren(expr: str) -> str:
    return expr if expr.isidentifier() or expr.endswith(")") else f"({expr})"


def _axis_of(name: str, left: Side) -> int:
    """The input axis whose group is the one name `name`."""
    for i, g in enumerate(left.groups):
        if g == (name,):
            return i
    raise OpError(f"repeat: the symbolic axis '{name}' is part of a group on both sides; "
                  "give the groups' other sizes, or merge one symbolic axis per output group")


_LETTERS = string.ascii_lowercase + string.ascii_uppercase  # the axis letters torch.einsum accepts


class EinsumAttrs(_Attrs):
    equation: str


@register
class Einsum(Op):
    """Einstein summation over named axes: `b h t d, b h s d -> b h t s`."""

    name = "einsum"
    inputs = ("*xs",)
    Attrs = EinsumAttrs

    def _parse(self, a: Any, ins: list[TensorType]) -> tuple[list[Side], Side, dict[str, Size]]:
        left, right = parse_arrow(a.equation, self.name)
        operands = [s.strip() for s in left.split(",")]
        if len(operands) != len(ins):
            raise OpError(f"einsum: equation '{a.equation}' has {len(operands)} operands, got {len(ins)} tensors")
        sides = [parse_side(o, self.name) for o in operands]
        sizes: dict[str, Size] = {}
        for k, (side, t) in enumerate(zip(sides, ins)):
            if any(len(g) != 1 or g == ("...",) for g in side.groups) or len(side.groups) != t.rank:
                raise OpError(f"einsum: operand {k + 1} '{operands[k]}' must name each of its {t.rank} axes once")
            for (n,), s in zip(side.groups, t.sizes):
                if n in sizes and sizes[n] != s:
                    raise OpError(f"einsum: axis '{n}' has size {sizes[n]} in one operand and {s} in another")
                sizes[n] = s
        if len(sizes) > len(_LETTERS):
            raise OpError(f"einsum: equation '{a.equation}' names {len(sizes)} axes; torch.einsum takes at most "
                          f"{len(_LETTERS)} (one letter each)")
        out = parse_side(right, self.name)
        for g in out.groups:
            if len(g) != 1 or g[0] not in sizes:
                raise OpError(f"einsum: output axis '{' '.join(g)}' is not an axis of the inputs")
        return sides, out, sizes

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        sides, out, sizes = self._parse(a, ins)
        labels: dict[str, str] = {}  # an axis keeps the label it had on the inputs, if any
        for side, t in zip(sides, ins):
            for (n,), d in zip(side.groups, t.shape):
                if d.name and n not in labels:
                    labels[n] = d.name
        return [TensorType(dtype=ins[0].dtype, shape=tuple(
            Dim(size=sizes[g[0]], name=labels.get(g[0], None if g[0].startswith("_") else g[0]))
            for g in out.groups))]

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        _, out, sizes = self._parse(a, ins)
        contracted = set(sizes) - set(out.names)
        if not contracted or len(ins) != 2:
            return Size.of(0)
        total = Size.of(2)
        for s in sizes.values():
            total = total * s
        return total

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        sides, out, sizes = self._parse(a, types)
        letters = {n: _LETTERS[i] for i, n in enumerate(sizes)}
        eq = ",".join("".join(letters[g[0]] for g in s.groups) for s in sides)
        eq += "->" + "".join(letters[g[0]] for g in out.groups)
        return f"torch.einsum({eq!r}, {', '.join(ins)})"


class FlattenAttrs(_Attrs):
    start: int = 1
    end: int = -1


@register
class Flatten(Op):
    name = "flatten"
    Attrs = FlattenAttrs
    linear = True
    torch = "torch.flatten({x}, {start}, {end})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        s, e = norm_dim(a.start, t.rank, self.name), norm_dim(a.end, t.rank, self.name)
        if s > e:
            raise OpError(f"flatten: start axis {a.start} comes after end axis {a.end}")
        merged = Size.of(1)
        for size in t.sizes[s:e + 1]:
            merged = merged * size
        dims = t.shape[:s] + (Dim(size=merged),) + t.shape[e + 1:]
        return [TensorType(dtype=t.dtype, shape=dims)]


class DimAttrs(_Attrs):
    dim: int = -1


@register
class Concat(Op):
    """Concatenation along one axis; the other axes broadcast (a class token [1, 1, D] joins [B, N, D])."""

    name = "concat"
    inputs = ("*xs",)
    Attrs = DimAttrs
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        rank = ins[0].rank
        if any(t.rank != rank for t in ins):
            raise OpError(f"concat: all inputs need the same rank, got {', '.join(str(t) for t in ins)}")
        if len({t.dtype for t in ins}) > 1:
            raise OpError(f"concat: inputs have different dtypes: {', '.join(str(t) for t in ins)}")
        d = norm_dim(a.dim, rank, self.name)
        dims = []
        for i in range(rank):
            if i == d:
                total = Size.of(0)
                for t in ins:
                    total = total + t.sizes[i]
                dims.append(Dim(size=total))
                continue
            sizes = {t.sizes[i] for t in ins} - {Size.of(1)}
            if len(sizes) > 1:
                raise OpError(f"concat: axis {i + 1} differs between inputs "
                              f"({', '.join(str(s) for s in sizes)}) and is not the concatenated axis {d + 1}")
            named = [t.shape[i] for t in ins if t.sizes[i] != 1]
            dims.append(named[0] if named else ins[0].shape[i])
        return [TensorType(dtype=ins[0].dtype, shape=tuple(dims))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        out = self.infer(a, types)[0]
        d = norm_dim(a.dim, out.rank, self.name)
        parts = []
        for name, t in zip(ins, types):
            need = [i for i in range(out.rank) if i != d and t.sizes[i] != out.sizes[i]]
            if not need:
                parts.append(name)
                continue
            src = next(n for n, u in zip(ins, types) if all(u.sizes[i] == out.sizes[i] for i in need))
            target = ["-1" if i == d or i not in need else f"{src}.shape[{i}]" for i in range(out.rank)]
            parts.append(f"{name}.expand({', '.join(target)})")
        return f"torch.cat([{', '.join(parts)}], dim={a.dim})"


class SplitAttrs(_Attrs):
    sizes: tuple[int, ...]
    dim: int = -1


@register
class Split(Op):
    name = "split"
    Attrs = SplitAttrs
    linear = True
    torch = "torch.split({x}, {sizes}, dim={dim})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        d = norm_dim(a.dim, t.rank, self.name)
        total = known(t.sizes[d], "the split axis")
        if sum(a.sizes) != total or any(s <= 0 for s in a.sizes):
            raise OpError(f"split: sizes {list(a.sizes)} do not add up to the axis size {total}")
        return [t.with_shape([Size.of(s) if i == d else z for i, z in enumerate(t.sizes)],
                             [None if i == d else dd.name for i, dd in enumerate(t.shape)]) for s in a.sizes]


class ChunkAttrs(_Attrs):
    chunks: int
    dim: int = -1


@register
class Chunk(Op):
    name = "chunk"
    Attrs = ChunkAttrs
    linear = True
    torch = "torch.chunk({x}, {chunks}, dim={dim})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        d = norm_dim(a.dim, t.rank, self.name)
        if a.chunks <= 0:
            raise OpError("chunk: the number of chunks must be positive")
        try:
            part = t.sizes[d] / a.chunks
        except SizeError:
            raise OpError(f"chunk: axis of size {t.sizes[d]} does not split into {a.chunks} equal parts") from None
        if not part.is_const and not all(isinstance(c, int) for c in part.terms.values()) and \
                not guards.require(t.sizes[d], "divisible", a.chunks, f"chunk into {a.chunks} equal parts"):
            raise OpError(f"chunk: the axis of symbolic size {t.sizes[d]} splits into {a.chunks} equal parts only "
                          f"when {t.sizes[d]} is divisible by {a.chunks}, which archc cannot prove",
                          hint=f"declare the axis as a multiple, e.g. {a.chunks}*K for a new axis K")
        shape = tuple(Dim(size=part) if i == d else dd for i, dd in enumerate(t.shape))
        return [TensorType(dtype=t.dtype, shape=shape)] * a.chunks


class UnbindAttrs(_Attrs):
    dim: int = 0


@register
class Unbind(Op):
    name = "unbind"
    Attrs = UnbindAttrs
    linear = True
    torch = "torch.unbind({x}, dim={dim})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        d = norm_dim(a.dim, t.rank, self.name)
        n = known(t.sizes[d], "the unbound axis")
        if n > 64:
            raise OpError(f"unbind: axis has {n} entries; at most 64 outputs are allowed")
        return [TensorType(dtype=t.dtype, shape=t.shape[:d] + t.shape[d + 1:])] * n


class SelectAttrs(_Attrs):
    dim: int
    index: int


@register
class Select(Op):
    name = "select"
    Attrs = SelectAttrs
    linear = True
    torch = "{x}.select({dim}, {index})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        d = norm_dim(a.dim, t.rank, self.name)
        if t.sizes[d].is_const and not -t.sizes[d].value <= a.index < t.sizes[d].value:
            raise OpError(f"select: index {a.index} is out of range for an axis of size {t.sizes[d]}")
        return [TensorType(dtype=t.dtype, shape=t.shape[:d] + t.shape[d + 1:])]


class SliceAttrs(_Attrs):
    dim: int
    start: int = 0
    end: int | None = None
    step: int = Field(default=1, gt=0)


@register
class Slice(Op):
    name = "slice"
    Attrs = SliceAttrs
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        d = norm_dim(a.dim, t.rank, self.name)
        size = t.sizes[d]
        if not size.is_const:
            if a.step != 1:
                raise OpError(f"slice: a step of {a.step} on the axis of symbolic size {size} has a length archc "
                              "cannot state", hint="slice an axis of known size, or with step 1")
            if a.start < 0 or (a.end is not None and a.end < 0):
                raise OpError("slice: negative bounds need a known axis size")
            if a.end is not None and a.end > a.start and guards.require(size, "at_least", a.end,
                                                                        f"slice {a.start}:{a.end}"):
                new = Size.of(a.end - a.start)
            elif a.end is not None:
                raise OpError(f"slice: {a.start}:{a.end} of the axis of symbolic size {size} has {a.end - a.start} "
                              f"entries only when {size} >= {a.end}, which archc cannot prove",
                              hint="declare the axis with a known size, or slice it with an open end "
                                   f"({a.start}:)")
            elif a.start and not guards.require(size, "at_least", a.start + 1, f"slice {a.start}:"):
                raise OpError(f"slice: {a.start}: of the axis of symbolic size {size} is empty unless "
                              f"{size} > {a.start}, which archc cannot check")
            else:
                new = size - a.start
        else:
            n = size.value
            count = len(range(*slice(a.start, a.end, a.step).indices(n)))
            if not count:
                raise OpError(f"slice: {a.start}:{'' if a.end is None else a.end} of an axis of size {n} is empty")
            new = Size.of(count)
        return [TensorType(dtype=t.dtype, shape=t.shape[:d] + (Dim(size=new),) + t.shape[d + 1:])]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        index = [":"] * types[0].rank
        d = norm_dim(a.dim, types[0].rank, self.name)
        index[d] = f"{a.start or ''}:{'' if a.end is None else a.end}" + (f":{a.step}" if a.step != 1 else "")
        return f"{ins[0]}[{', '.join(index)}]"


class TakeAttrs(_Attrs):
    dim: int = 0


@register
class Take(Op):
    """The entries of `x` along axis `dim` at the positions in the integer tensor `index`, as
    numpy's `take` and torch's `x[:, index]`: the axis is replaced by the index's axes
    (`take(table, index, dim=1)` on [H, K] with index i64[N, N] is [H, N, N]). A relative-position
    bias is a learned table taken at an index computed from sizes."""

    name = "take"
    inputs = ("x", "index")
    Attrs = TakeAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t, index = ins
        if index.dtype not in ("i64", "i32"):
            raise OpError(f"take: the index must be an i64 or i32 tensor, got {index}")
        if index.rank == 0:
            raise OpError("take: the index needs at least one axis (a single position is `select`)")
        d = norm_dim(a.dim, t.rank, self.name)
        return [TensorType(dtype=t.dtype, shape=t.shape[:d] + index.shape + t.shape[d + 1:])]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        d = norm_dim(a.dim, types[0].rank, self.name)
        return f"{ins[0]}[{', '.join([':'] * d + [ins[1]])}]"
