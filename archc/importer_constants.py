"""Constants the importer writes as spec code (issue #19): non-persistent buffers, and values
the forward computes from sizes alone.

A non-persistent buffer is not in the `state_dict`, so a spec cannot load it: the spec has to
compute it. The importer sees only its value (the module computed it in `__init__`), so it
matches that value against the constructions timm uses, each evaluated here in torch and
compared exactly, and writes the matching one with `arange`, `repeat`, `rearrange`, `full` and
arithmetic (`constant_lines`). The `hoist_constants` pass then makes it a build-time constant
again. A value computed in the forward from sizes alone is evaluated on the example and matched
the same way (`fourier`).

- **Offsets between positions** (TinyViT, LeViT): `index[q, k] = |y_q - y_k| * W + |x_q - x_k|`
  over an H x W grid of keys and the grid of queries every `stride` positions (1 for
  self-attention); the index of a learned bias per offset.
- **Relative positions** (Swin): `index[q, k] = (y_q - y_k + H - 1) * (2W - 1) + x_q - x_k + W - 1`
  over an H x W window.
- **Distances** (ConViT's `rel_indices`, [1, N, N, 3] floats): `x_k - x_q`, `y_k - y_q` and the
  squared distance.
- **Shifted windows** (Swin's `attn_mask`): -100 between positions of a window from different
  regions of the rolled map, else 0.
- **Rotary tables** (EVA's `rope.pos_embed`) and **Fourier encodings** (XCiT, EdgeNeXt): sin and
  cos of positions times frequencies.

An index is computed in f32 (exact for these sizes: every value is a small integer, and `sqrt`
of a square is exact) and cast to i64, since archc's arithmetic with a number gives a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archc.importer_export import fmt


@dataclass(frozen=True)
class Grid:
    """Keys on an `h` x `w` grid, queries on the same grid every `stride` positions."""

    h: int
    w: int
    stride: int = 1

    def axes(self, torch: Any) -> tuple[Any, Any]:
        """(dy, dx): the offsets [Hq, Wq, H, W] from each key to each query, as floats."""
        ky, kx = torch.arange(self.h, dtype=torch.float32), torch.arange(self.w, dtype=torch.float32)
        qy, qx = ky[::self.stride], kx[::self.stride]
        dy = qy[:, None, None, None] - ky[None, None, :, None]
        dx = qx[None, :, None, None] - kx[None, None, None, :]
        return torch.broadcast_tensors(dy, dx)

    @property
    def queries(self) -> int:
        return -(-self.h // self.stride) * -(-self.w // self.stride)


def _offsets(torch: Any, g: Grid) -> Any:
    dy, dx = g.axes(torch)
    return (dy.abs() * g.w + dx.abs()).reshape(g.queries, g.h * g.w).long()


def _relative(torch: Any, g: Grid) -> Any:
    dy, dx = g.axes(torch)
    return ((dy + g.h - 1) * (2 * g.w - 1) + dx + g.w - 1).reshape(g.queries, g.h * g.w).long()


def _distances(torch: Any, g: Grid) -> Any:
    dy, dx = g.axes(torch)
    return torch.stack([-dx, -dy, dx * dx + dy * dy], dim=-1).reshape(1, g.queries, g.h * g.w, 3)


FLAT = fmt("a b c d -> (a b) (c d)")
COLUMN = fmt("a b c d -> 1 (a b) (c d) 1")


def _cast(expr: str) -> str:
    return f"cast({expr}, dtype={fmt('i64')}) >> rearrange({FLAT})"


# name -> (the tensor as torch computes it, the spec expression of it over `dy` and `dx`, a comment)
KINDS: dict[str, tuple[Callable[[Any, Grid], Any], Callable[[Grid, str, str], str], str]] = {
    "offsets": (_offsets, lambda g, dy, dx: _cast(f"sqrt({dy} * {dy}) * {fmt(g.w)} + sqrt({dx} * {dx})"),
                "the offset |dy| * W + |dx| between each query and key position"),
    "relative": (_relative, lambda g, dy, dx: _cast(f"({dy} + {fmt(g.h - 1)}) * {fmt(2 * g.w - 1)} + {dx} + "
                                                    f"{fmt(g.w - 1)}"),
                 "the relative position (dy + H - 1) * (2W - 1) + dx + W - 1 of each key to each query"),
    "distances": (_distances, lambda g, dy, dx: f"concat(rearrange(-{dx}, {COLUMN}), rearrange(-{dy}, {COLUMN}), "
                                                f"rearrange({dx} * {dx} + {dy} * {dy}, {COLUMN}), dim=3)",
                  "-dx, -dy and dx^2 + dy^2 from each query to each key position"),
}


def recognize(value: Any) -> tuple[str, Grid] | None:
    """The construction and grid that give `value` exactly ([Nq, Nk] integers, or [1, N, N, 3]
    floats), or None."""
    import torch

    if value.dim() == 2 and value.dtype in (torch.int64, torch.int32):
        nq, nk = value.shape
    elif value.dim() == 4 and value.shape[0] == 1 and value.shape[3] == 3 and value.dtype == torch.float32:
        nq, nk = value.shape[1:3]
    else:
        return None
    for h in range(1, nk + 1):
        if nk % h:
            continue
        for stride in range(1, max(h, nk // h) + 1):
            g = Grid(h, nk // h, stride)
            if g.queries != nq:
                continue
            for kind, (compute, _, _) in KINDS.items():
                want = compute(torch, g)
                if want.shape == value.shape and torch.equal(want.to(value.dtype), value):
                    return kind, g
    return None


def index_lines(kind: str, g: Grid, device: str, names: Callable[[str], str], target: str) -> list[str]:
    """Spec lines that compute the tensor named `target`: `dy` and `dx` as broadcast differences
    of `arange`s [Hq, Wq, H, W] on the device of the value `device`, then the formula (an index
    cast to i64 and flattened to [Nq, Nk]). `names` gives a fresh value name for a base name."""
    _, formula, comment = KINDS[kind]

    def positions(size: int, step: int, pattern: str, other: int) -> str:
        steps = f", {fmt(step)}" if step != 1 else ""
        return f"repeat(arange({device}, 0, {fmt(size)}{steps}, dtype={fmt('f32')}), {fmt(pattern)}, n={fmt(other)})"

    dy, dx = names("dy"), names("dx")
    wq, hq = -(-g.w // g.stride), -(-g.h // g.stride)
    return [
        f"# {target}: {comment}",
        f"{dy} = {positions(g.h, g.stride, 'i -> i n 1 1', wq)} - {positions(g.h, 1, 'j -> 1 1 j n', g.w)}",
        f"{dx} = {positions(g.w, g.stride, 'i -> n i 1 1', hq)} - {positions(g.w, 1, 'j -> 1 1 n j', g.h)}",
        f"{target} = {formula(g, dy, dx)}",
    ]


@dataclass(frozen=True)
class Fourier:
    """DETR's sine position encoding as XCiT and EdgeNeXt compute it: on an h x w grid, channels
    [0, c) of y and [c, 2c) of x, each the sin (even channels) and cos (odd) of the position
    (1-based, divided by its count + eps, times 2 pi) over the frequencies
    temperature ** (2i / c)."""

    c: int
    h: int
    w: int
    temperature: float = 10000.0
    eps: float = 1e-6

    def compute(self, torch: Any) -> Any:
        freqs = self.temperature ** (torch.arange(0, self.c, 2, dtype=torch.float32) / self.c)

        def axis(n: int) -> Any:
            t = torch.arange(1, n + 1, dtype=torch.float32) / (n + self.eps) * (2 * math.pi)
            t = t[:, None] / freqs
            return torch.stack([t.sin(), t.cos()], dim=2).flatten(1)  # [n, c]

        ys = axis(self.h).T[:, :, None].expand(self.c, self.h, self.w)
        xs = axis(self.w).T[:, None, :].expand(self.c, self.h, self.w)
        return torch.cat([ys, xs])[None]


def fourier(value: Any) -> Fourier | None:
    """The Fourier encoding that `value` ([n, 2c, h, w] floats, every entry of axis 0 alike) is
    within 1e-6, or None."""
    import torch

    if value.dim() != 4 or not value.is_floating_point() or value.shape[1] % 4 or not bool((value == value[:1]).all()):
        return None
    f = Fourier(value.shape[1] // 2, value.shape[2], value.shape[3])
    return f if torch.allclose(f.compute(torch), value[:1].float(), rtol=0, atol=1e-6) else None


def fourier_lines(f: Fourier, device: str, names: Callable[[str], str], target: str) -> list[str]:
    """Spec lines that compute the encoding `f` as `target` [1, 2c, h, w]."""
    freqs, ys, xs = names("freqs"), names("ys"), names("xs")
    two_pi = fmt(2 * math.pi)

    def angles(n: int, axis: str) -> str:
        pos = f"arange({device}, 1, {fmt(n + 1)}, dtype={fmt('f32')}) / {fmt(n + f.eps)} * {two_pi}"
        return f"rearrange({pos}, {fmt(f'{axis} -> {axis} 1')}) / {freqs}"

    def sin_cos(t: str, axis: str, other: str, size: int) -> str:
        pair = f"concat(rearrange(sin({t}), {fmt(f'{axis} i -> {axis} i 1')}), " \
               f"rearrange(cos({t}), {fmt(f'{axis} i -> {axis} i 1')}), dim=2)"
        return f"repeat({pair}, {fmt(f'{axis} i k -> 1 (i k) h w')}, {other}={fmt(size)})"

    return [
        f"# {target}: the Fourier position encoding of the {fmt(f.h)} x {fmt(f.w)} grid (sin and cos of y, then of x)",
        f"{freqs} = {fmt(f.temperature)} ** (arange({device}, 0, {fmt(f.c)}, 2, dtype={fmt('f32')}) / {fmt(f.c)})",
        f"{ys} = {angles(f.h, 'h')}",
        f"{xs} = {angles(f.w, 'w')}",
        f"{target} = concat({sin_cos(ys, 'h', 'w', f.w)}, {sin_cos(xs, 'w', 'h', f.h)}, dim=1)",
    ]


@dataclass(frozen=True)
class ShiftedWindows:
    """Swin's mask for windows of `size` x `size` over an h x w map rolled by `shift`: each
    position's region (3 x 3 regions: before the last window, within it before the shift, the
    rolled-in part), -100 between two positions of a window from different regions, else 0."""

    h: int
    w: int
    size: int
    shift: int

    def regions(self, torch: Any, n: int) -> Any:
        return torch.cat([torch.zeros(n - self.size), torch.ones(self.size - self.shift), torch.full((self.shift,), 2.0)])

    def compute(self, torch: Any) -> Any:
        ids = self.regions(torch, self.h)[:, None] * 3 + self.regions(torch, self.w)[None, :]
        s = self.size
        ids = ids.reshape(self.h // s, s, self.w // s, s).permute(0, 2, 1, 3).reshape(-1, s * s)
        diff = ids[:, None, :] - ids[:, :, None]
        return (torch.relu(1.0 - diff * diff) - 1.0) * 100.0


def shifted_windows(value: Any) -> ShiftedWindows | None:
    """The shifted-window mask that `value` ([windows, N, N] floats) is exactly, or None."""
    import torch

    if value.dim() != 3 or not value.is_floating_point() or value.shape[1] != value.shape[2]:
        return None
    size = math.isqrt(value.shape[1])
    windows = value.shape[0]
    if size * size != value.shape[1]:
        return None
    for rows in range(1, windows + 1):
        if windows % rows:
            continue
        for shift in range(1, size):
            m = ShiftedWindows(rows * size, windows // rows * size, size, shift)
            if torch.equal(m.compute(torch).to(value.dtype), value):
                return m
    return None


def window_lines(m: ShiftedWindows, device: str, names: Callable[[str], str], target: str) -> list[str]:
    """Spec lines that compute the mask `m` as `target` [windows, N, N]."""
    rows, cols, diff = names("rows"), names("cols"), names("regions")

    def regions(n: int) -> str:
        parts = [f"full({device}, [{fmt(k)}], {fmt(v)})" for k, v in
                 ((n - m.size, 0.0), (m.size - m.shift, 1.0), (m.shift, 2.0))]
        return f"concat({', '.join(parts)}, dim=0)"

    partition = fmt("(h a) (w b) -> (h w) (a b)")
    return [
        (f"# {target}: -100 between positions of a window that come from different regions of the map "
         f"rolled by {fmt(m.shift)}, else 0"),
        f"{rows} = {regions(m.h)}",
        f"{cols} = {regions(m.w)}",
        (f"{diff} = rearrange(rearrange({rows}, {fmt('h -> h 1')}) * 3.0 + rearrange({cols}, {fmt('w -> 1 w')}), "
         f"{partition}, a={fmt(m.size)}, b={fmt(m.size)})"),
        (f"{target} = (relu(1.0 - (rearrange({diff}, {fmt('n k -> n 1 k')}) - "
         f"rearrange({diff}, {fmt('n q -> n q 1')})) ** 2) - 1.0) * 100.0"),
    ]


@dataclass(frozen=True)
class Rotary:
    """An axial rotary table as EVA keeps it ([h * w, 8 * bands]): the sin, then the cos, of each
    position's y and x (times `ref / size` when the model was made for another grid) times the
    frequencies 1 / temperature ** (j / bands), each angle twice (the interleaved layout)."""

    h: int
    w: int
    bands: int
    ref_h: int | None = None
    ref_w: int | None = None
    temperature: float = 10000.0

    def compute(self, torch: Any) -> Any:
        freqs = 1.0 / self.temperature ** (torch.arange(self.bands, dtype=torch.float32) / self.bands)

        def axis(n: int, ref: int | None) -> Any:
            t = torch.arange(n, dtype=torch.float32)
            return (t / n * ref if ref is not None else t)[:, None] * freqs

        ys = axis(self.h, self.ref_h)[:, None, :].expand(self.h, self.w, self.bands)
        xs = axis(self.w, self.ref_w)[None, :, :].expand(self.h, self.w, self.bands)
        angles = torch.cat([ys, xs], dim=-1).reshape(self.h * self.w, -1).repeat_interleave(2, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotary(value: Any) -> Rotary | None:
    """The rotary table that `value` ([N, 8 * bands] floats) is exactly, or None."""
    import torch

    if value.dim() != 2 or value.dtype != torch.float32 or value.shape[1] % 8:
        return None
    n, bands = value.shape[0], value.shape[1] // 8
    for h in range(1, n + 1):
        if n % h:
            continue
        w = n // h
        refs: list[tuple[int | None, int | None]] = [(None, None)]
        if h > 1 and w > 1 and bands > 1:  # the slowest frequency's angle is small: asin gives the scaled position
            slow = 1.0 / 10000.0 ** ((bands - 1) / bands)
            ref_h = round(float(torch.asin(value[w, 2 * (bands - 1)])) / slow * h)
            ref_w = round(float(torch.asin(value[1, 2 * (2 * bands - 1)])) / slow * w)
            refs.append((ref_h, ref_w))
        for ref_h, ref_w in refs:
            r = Rotary(h, w, bands, ref_h, ref_w)
            if torch.equal(r.compute(torch), value):
                return r
    return None


def rotary_lines(r: Rotary, device: str, names: Callable[[str], str], target: str) -> list[str]:
    """Spec lines that compute the table `r` as `target`."""
    freqs, ys, xs, angles = names("freqs"), names("ys"), names("xs"), names("angles")

    def positions(n: int, ref: int | None, axis: str) -> str:
        pos = f"arange({device}, 0, {fmt(n)}, dtype={fmt('f32')})"
        pos = f"{pos} / {fmt(n)} * {fmt(ref)}" if ref is not None else pos
        return f"rearrange({pos}, {fmt(f'{axis} -> {axis} 1')}) * {freqs}"

    scaled = f" (scaled to a {fmt(r.ref_h)} x {fmt(r.ref_w)} grid)" if r.ref_h is not None else ""
    return [
        (f"# {target}: the rotary table of the {fmt(r.h)} x {fmt(r.w)} grid{scaled}: sin, then cos, of y and x times "
         f"{fmt(r.bands)} frequencies, each angle twice"),
        (f"{freqs} = 1.0 / {fmt(r.temperature)} ** (arange({device}, 0, {fmt(r.bands)}, dtype={fmt('f32')}) / "
         f"{fmt(r.bands)})"),
        f"{ys} = {positions(r.h, r.ref_h, 'h')}",
        f"{xs} = {positions(r.w, r.ref_w, 'w')}",
        (f"{angles} = concat(repeat({ys}, {fmt('h j -> (h w) (j r)')}, w={fmt(r.w)}, r=2), "
         f"repeat({xs}, {fmt('w j -> (h w) (j r)')}, h={fmt(r.h)}, r=2), dim=1)"),
        f"{target} = concat(sin({angles}), cos({angles}), dim=1)",
    ]


def constant_lines(value: Any, device: str, names: Callable[[str], str], target: str) -> list[str] | None:
    """The spec lines that compute the non-persistent buffer `value` as `target`, or None when it is
    no construction known here."""
    index = recognize(value)
    if index is not None:
        return index_lines(*index, device, names, target)
    mask = shifted_windows(value)
    if mask is not None:
        return window_lines(mask, device, names, target)
    table = rotary(value)
    if table is not None:
        return rotary_lines(table, device, names, target)
    return None
