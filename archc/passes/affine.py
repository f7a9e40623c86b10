"""Affine maps in convolution form: the kernel algebra of structural re-parameterization.

A `Form` says that a value is `conv_nd(x, K, b, stride, padding, groups)` of the region input x
(nd = 0: a linear map of the channel axis, `x @ K.T + b`). Each op of a linear region maps the
forms of its inputs to the form of its output; the rules are the notes' T1-T12:

    then_conv     conv2 after conv1: K = K2 * K1 (a transposed conv, stride s1), b = b2 + sum K2 b1
                  (T5, T8 dilation -> dense, T10 linear after linear). Exact only if conv2 adds no
                  zero padding, or conv1 is 1x1, stride 1, unpadded and has no bias (the "bias
                  padding" pitfall, DBB issues 9/16): otherwise `NotExact`.
    then_scale    per-output-channel scale s and shift t: K*s, b*s + t (T1 BatchNorm, T11 LayerScale)
    add           sum of two forms on the same grid: pad the kernels to a common window aligned
                  on their padding, then add (T2, T3 multi-scale, T4 identity, T6 avg-pool).

Groups are tracked structurally: a form with `groups = g` is block-diagonal in g blocks, so the
identity is a depthwise 1x1 (groups = C) and the sum or product of forms with groups g1 and g2
has groups gcd(g1, g2). The same code runs on stand-ins (`stand_in`: zeros of the weights'
shapes, shapes only) when a pass decides what to emit, and on float64 weights when the weight
transform runs, so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd, prod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


_ZERO: list["Tensor"] = []  # the one element every stand-in broadcasts


def stand_in(shape: tuple[int, ...]) -> "Tensor":
    """Zeros of `shape` standing for a tensor when only shapes matter (a pass planning): one float64
    element broadcast, so that no memory is written; a product with one is again one, computed
    from the shapes alone."""
    import torch

    if not _ZERO:
        _ZERO.append(torch.zeros((), dtype=torch.float64))
    return _ZERO[0].expand(shape)


def _times(a: "Tensor", b: "Tensor") -> "Tensor":
    """a * b (broadcast); a stand-in when either is one (zeros times anything)."""
    if _ZERO and (a._base is _ZERO[0] or b._base is _ZERO[0]):
        n = max(a.dim(), b.dim())  # the broadcast shape (torch.broadcast_shapes imports sympy: seconds)
        sa, sb = (1,) * (n - a.dim()) + tuple(a.shape), (1,) * (n - b.dim()) + tuple(b.shape)
        return stand_in(tuple(x if y == 1 else y for x, y in zip(sa, sb)))
    return a * b


class NotExact(Exception):
    """The composition is linear but is not one convolution (a padding or alignment mismatch)."""


@dataclass(frozen=True)
class Form:
    K: "Tensor"  # [C_out, C_in / groups, *kernel]
    b: "Tensor"  # [C_out]
    groups: int
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    biased: bool  # structurally: may the bias be non-zero?
    is_identity: bool = False  # exactly the region input (composition is then free)

    @property
    def nd(self) -> int:
        return self.K.dim() - 2

    @property
    def cout(self) -> int:
        return int(self.K.shape[0])

    @property
    def cin(self) -> int:
        return int(self.K.shape[1]) * self.groups

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.K.shape[2:])

    @property
    def pointwise(self) -> bool:
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) and not any(self.padding)


def identity(channels: int, nd: int, like: "Tensor") -> Form:
    """x itself: a depthwise 1x1 kernel of ones (T4, groups respected by construction)."""
    import torch

    ones = torch.ones((channels, 1) + (1,) * nd, dtype=like.dtype, device=like.device)
    return Form(ones, ones.new_zeros(channels), channels, (1,) * nd, (0,) * nd, False, is_identity=True)


def regroup(K: "Tensor", groups: int, new: int) -> "Tensor":
    """The same block-diagonal kernel written with `new` groups (`new` divides `groups`)."""
    import torch

    r = groups // new
    if r == 1:
        return K
    cout, cg, spatial = int(K.shape[0]), int(K.shape[1]), tuple(K.shape[2:])
    blocks = K.reshape(new, r, cout // groups, cg, prod(spatial))
    eye = torch.eye(r, dtype=K.dtype, device=K.device)
    return torch.einsum("aiocz,ij->aiojcz", blocks, eye).reshape(cout, r * cg, *spatial)


def dense_dilation(W: "Tensor", dilation: tuple[int, ...]) -> "Tensor":
    """A dilated kernel as a dense one with zeros between the taps (T8)."""
    if all(d == 1 for d in dilation):
        return W
    size = tuple(d * (k - 1) + 1 for k, d in zip(W.shape[2:], dilation))
    out = W.new_zeros(tuple(W.shape[:2]) + size)
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = W
    return out


def then_conv(f: Form, W: "Tensor", bias: "Tensor | None", groups: int, stride: tuple[int, ...],
              padding: tuple[int, ...], dilation: tuple[int, ...]) -> Form:
    """conv(W, bias, ...) applied to the value of form f (T5 generalized; T10 when nd = 0)."""
    import torch
    import torch.nn.functional as F

    if any(padding) and not (f.pointwise and not f.biased):
        raise NotExact("a zero-padded conv after a conv with a bias or a spatial extent is exact only "
                       "without padding in the second conv (pad the first one instead)")
    W = dense_dilation(W, dilation)
    if f.is_identity:
        return Form(W, bias if bias is not None else W.new_zeros(W.shape[0]), groups, stride, padding,
                    bias is not None)
    g = gcd(f.groups, groups)
    K1, K2 = regroup(f.K, f.groups, g), regroup(W, groups, g)
    E, Dg, Cg = int(K2.shape[0]), int(K2.shape[1]), int(K1.shape[1])
    k2 = tuple(K2.shape[2:])
    if f.nd == 0:
        K = torch.bmm(K2.reshape(g, E // g, Dg), K1.reshape(g, Dg, Cg)).reshape(E, Cg)
    else:
        transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[f.nd]
        inp = K2.reshape((g, E // g, Dg) + k2).transpose(0, 1).reshape((E // g, g * Dg) + k2)
        out = transpose(inp, K1, stride=f.stride, groups=g)
        K = out.reshape((E // g, g, Cg) + tuple(out.shape[2:])).transpose(0, 1).reshape((E, Cg) + tuple(out.shape[2:]))
    summed = K2.reshape(g, E // g, Dg, -1).sum(-1)
    b = torch.bmm(summed, f.b.reshape(g, Dg, 1)).reshape(E)
    if bias is not None:
        b = b + bias
    return Form(K, b, g, tuple(s1 * s2 for s1, s2 in zip(f.stride, stride)),
                tuple(p1 + s1 * p2 for p1, s1, p2 in zip(f.padding, f.stride, padding)),
                f.biased or bias is not None)


def then_scale(f: Form, scale: "Tensor | None", shift: "Tensor | None") -> Form:
    """Per-output-channel affine map after f: s * y + t (T1, T11)."""
    K, b = f.K, f.b
    if scale is not None:
        K = _times(K, scale.reshape((-1,) + (1,) * (K.dim() - 1)))
        b = _times(b, scale)
    if shift is not None:
        b = b + shift
    return replace(f, K=K, b=b, biased=f.biased or shift is not None, is_identity=False)


def _aligned(f: Form, groups: int, padding: tuple[int, ...], size: tuple[int, ...]) -> "Tensor":
    import torch.nn.functional as F

    K = regroup(f.K, f.groups, groups)
    pads: list[int] = []
    for k, p, P, total in reversed(list(zip(f.kernel, f.padding, padding, size))):
        left = P - p
        pads += [left, total - k - left]
    return F.pad(K, pads) if any(pads) else K


def add(f: Form, h: Form, sign: float = 1.0) -> Form:
    """f + sign * h on the same output grid (T2 with T3: kernels centred by their padding)."""
    if f.nd != h.nd or f.stride != h.stride or f.cout != h.cout or f.cin != h.cin:
        raise NotExact(f"branches differ in stride or channels ({f.stride} vs {h.stride})")
    g = gcd(f.groups, h.groups)
    padding = tuple(max(a, c) for a, c in zip(f.padding, h.padding))
    size = tuple(max(k1 + P - p1, k2 + P - p2) for k1, p1, k2, p2, P in
                 zip(f.kernel, f.padding, h.kernel, h.padding, padding))
    K = _aligned(f, g, padding, size).add(_aligned(h, g, padding, size), alpha=sign)
    return Form(K, f.b.add(h.b, alpha=sign), g, f.stride, padding, f.biased or h.biased)


def avgpool_kernel(channels: int, kernel: tuple[int, ...], like: "Tensor") -> "Tensor":
    """Average pooling as a depthwise kernel of 1/k (T6; exact with count_include_pad)."""
    import torch

    return torch.full((channels, 1) + kernel, 1.0 / prod(kernel), dtype=like.dtype, device=like.device)

