"""The importer on what timm's vision transformers compute beside their weights (issue #19):
index tables in non-persistent buffers (archc/importer_constants.py), a gather with them
(`take`), strided slices, reshapes that regroup axes, autocast regions, computed biases, fixed
filters, Fourier position encodings and values expanded to the batch.

Each module here is written from the papers' equations, not copied from timm; each import is
verified by the importer (strict state_dict load, outputs within 1e-5) and again here on another
batch size, and the text is checked for what a person would write.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

import archc
from archc.errors import ArchError

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _round_trip(module: Any, x: Any) -> str:
    from archc.api import build
    from archc.elaborate import elaborate_text

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    module.eval()
    text = archc.import_module(module, x)
    built = build(elaborate_text(text, "imported.arch")).eval()
    built.load_state_dict(module.state_dict(), strict=True)
    other = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for inp in (x, other):
            torch.testing.assert_close(built(inp), module(inp), rtol=1e-5, atol=1e-5)
    return text


class OffsetBiasAttention(nn.Module):
    """Attention on an h x w grid with a learned bias per (|dy|, |dx|) offset (LeViT, TinyViT);
    with `stride`, the queries are every stride-th position (LeViT's downsampling attention). The
    bias is cached per device in eval mode, as timm does."""

    def __init__(self, dim: int = 8, heads: int = 2, h: int = 4, w: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.heads, self.h, self.w, self.stride = heads, h, w, stride
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        keys = list(itertools.product(range(h), range(w)))
        queries = list(itertools.product(range(0, h, stride), range(0, w, stride)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for q in queries:
            for k in keys:
                idxs.append(offsets.setdefault((abs(q[0] - k[0]), abs(q[1] - k[1])), len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(queries), len(keys)), persistent=False)
        self.cache: dict[str, Any] = {}

    def bias(self, device: Any) -> Any:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        if str(device) not in self.cache:
            self.cache[str(device)] = self.attention_biases[:, self.attention_bias_idxs]
        return self.cache[str(device)]

    def forward(self, x: Any) -> Any:
        b, n, c = x.shape
        xq = x.view(b, self.h, self.w, c)[:, ::self.stride, ::self.stride].reshape(b, -1, c)
        q = self.q(xq).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(x.device))
        return out.transpose(1, 2).reshape(b, -1, c)


@pytest.mark.parametrize("stride", [1, 2])
def test_offset_bias_is_taken_at_an_index_the_spec_computes(stride: int) -> None:
    module = OffsetBiasAttention(stride=stride)
    text = _round_trip(module, torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(1)))
    assert "    # attention_bias_idxs: the offset |dy| * W + |dx| between each query and key position\n" in text
    assert "sqrt(dy * dy) * 3 + sqrt(dx * dx)" in text and "take(attention_biases([2, 12]), attention_bias_idxs, dim=1)" in text
    assert ("slice(" in text and "step=2" in text) == (stride == 2)
    assert module.cache and all(isinstance(v, torch.Tensor) and not hasattr(v, "fake_mode") for v in module.cache.values())


class RelativeBiasAttention(nn.Module):
    """Swin's window attention: a table of (2h - 1)(2w - 1) biases per head, read at each pair's
    relative position."""

    def __init__(self, dim: int = 8, heads: int = 2, h: int = 3, w: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), heads))
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (rel[..., 0] + h - 1) * (2 * w - 1) + rel[..., 1] + w - 1
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: Any) -> Any:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = (q @ k.transpose(-2, -1)) * 0.5 + bias.permute(2, 0, 1).unsqueeze(0)
        return (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


def test_relative_position_table_is_taken_at_an_index_the_spec_computes() -> None:
    text = _round_trip(RelativeBiasAttention(), torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)))
    assert "# relative_position_index: the relative position" in text and "(dy + 2) * 3 + dx + 1" in text
    assert "take(relative_position_bias_table([15, 2]), relative_position_index" in text


class DistanceGating(nn.Module):
    """ConViT's gated positional attention, its positional half: (-dx, -dy, dx^2 + dy^2) of each
    pair of positions, expanded to the batch, projected per head and softmaxed, gating the scores."""

    def __init__(self, dim: int = 8, heads: int = 2, side: int = 3) -> None:
        super().__init__()
        self.qk, self.pos_proj = nn.Linear(dim, 2 * dim), nn.Linear(3, heads)
        self.heads = heads
        ind = torch.arange(side)[None, :] - torch.arange(side)[:, None]
        dx, dy = ind.repeat(side, side), ind.repeat_interleave(side, 0).repeat_interleave(side, 1)
        rel = torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1).float()[None]
        self.register_buffer("rel_indices", rel, persistent=False)

    def forward(self, x: Any) -> Any:
        b, n, _ = x.shape
        q, k = self.qk(x).reshape(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)).softmax(-1)
        pos = self.pos_proj(self.rel_indices.expand(b, -1, -1, -1)).permute(0, 3, 1, 2).softmax(-1)
        return (scores * pos).sum(-1)


def test_distances_expanded_to_the_batch() -> None:
    text = _round_trip(DistanceGating(), torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(1)))
    assert "    # rel_indices: -dx, -dy and dx^2 + dy^2 from each query to each key position\n" in text
    assert "rel_indices >> pos_proj" in text  # no expand: the product broadcasts


class FourierEncoding(nn.Module):
    """DETR's sine encoding of an h x w grid (as XCiT writes it: called with sizes, no tensor),
    projected by a 1 x 1 convolution and added to the features."""

    def __init__(self, hidden: int = 8, dim: int = 6) -> None:
        super().__init__()
        self.hidden = hidden
        self.token_projection = nn.Conv2d(2 * hidden, dim, 1)

    def forward(self, b: int, h: int, w: int) -> Any:
        ys = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * 2 * math.pi
        xs = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * 2 * math.pi
        freqs = 10000.0 ** (2 * (torch.arange(self.hidden) // 2) / self.hidden)
        parts = []
        for t in (ys, xs):
            t = t[:, :, None] / freqs
            parts.append(torch.stack([t[..., 0::2].sin(), t[..., 1::2].cos()], dim=-1).flatten(2))
        pos = torch.cat(parts, dim=-1).permute(2, 0, 1)[None]
        return self.token_projection(pos).repeat(b, 1, 1, 1)


class WithEncoding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pos_embed = FourierEncoding()

    def forward(self, x: Any) -> Any:
        x = self.conv(x)
        return x + self.pos_embed(x.shape[0], x.shape[2], x.shape[3])


def test_fourier_encoding_from_sizes_is_written_as_code() -> None:
    text = _round_trip(WithEncoding(), torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1)))
    assert "    # pos: the Fourier position encoding of the 4 x 5 grid (sin and cos of y, then of x)\n" in text
    assert 'freqs = 10000.0 ** (arange(x, 0, 8, 2, dtype="f32") / 8)' in text
    assert '@scope("pos_embed.token_projection")' in text


class Unfold(nn.Module):
    """MobileViT's unfolding into 2 x 2 patches and back: reshapes that split axes and merge the
    parts across them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Any) -> Any:
        b, c, h, w = x.shape
        p = x.reshape(b * c * h // 2, 2, w // 2, 2).transpose(1, 2).reshape(b, c, -1, 4)
        p = self.fc(p)
        return p.reshape(b * c * h // 2, w // 2, 2, 2).transpose(1, 2).reshape(b, c, h, w)


def test_reshape_that_regroups_axes() -> None:
    text = _round_trip(Unfold(), torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(1)))
    assert 'rearrange("a0 a1 (a2 a3) (a4 a5) -> (a0 a1 a2) a3 a4 a5", a2=2, a4=3)' in text


class Odds(nn.Module):
    """Three things beside the weights: an autocast-off region, a computed qkv bias with a zero
    key bias (EVA), and a fixed binomial blur with stride 2 (BlurPool)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
        self.register_buffer("k_bias", torch.zeros(4), persistent=False)
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (taps[:, None] * taps[None, :] / 16).expand(3, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Any) -> Any:
        blurred = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt, stride=2, groups=3)
        t = blurred.flatten(2).transpose(1, 2)[..., :1].expand(-1, -1, 4)
        qkv = F.linear(t, self.qkv.weight, torch.cat([self.q_bias, self.k_bias, self.v_bias]))
        q, k, v = qkv.chunk(3, dim=-1)
        with torch.autocast("cpu", enabled=False):
            scores = (q @ k.transpose(-2, -1)).softmax(-1)
        return scores @ v


def test_autocast_region_computed_bias_and_blur() -> None:
    text = _round_trip(Odds(), torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    assert "avgpool2d(2, stride=1) >> avgpool2d(2, stride=1) >> slice(2, step=2) >> slice(3, step=2)" in text
    assert "full(x, [4], 0.0)" in text and "qkv = linear(12, bias=false)" in text


class Shuffled(nn.Module):
    """An index buffer that is no construction archc knows (a permutation)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(4, 6))
        self.register_buffer("index", torch.tensor([[3, 1, 0], [2, 5, 4]]), persistent=False)

    def forward(self, x: Any) -> Any:
        return x + self.table[:, self.index].sum(-1)


def test_an_unknown_index_buffer_is_a_clear_error() -> None:
    with pytest.raises(ArchError) as err:
        archc.import_module(Shuffled(), torch.randn(2, 4, 2))
    assert "the buffer 'index' is not persistent" in err.value.message
    assert "no index archc knows how to compute" in err.value.message


class ShiftedWindowAttention(nn.Module):
    """Swin's shifted windows on a 4 x 4 map: roll by one, attend within 2 x 2 windows with the
    mask between regions that the roll brought together, roll back."""

    def __init__(self, dim: int = 4, size: int = 2, shift: int = 1) -> None:
        super().__init__()
        self.size, self.shift = size, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        region = torch.zeros(4, 4)
        cuts = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
        for n, (rows, cols) in enumerate(itertools.product(cuts, cuts)):
            region[rows, cols] = n
        windows = region.view(2, size, 2, size).permute(0, 2, 1, 3).reshape(4, size * size)
        same = windows[:, None, :] == windows[:, :, None]
        self.register_buffer("attn_mask", torch.where(same, 0.0, -100.0), persistent=False)

    def forward(self, x: Any) -> Any:
        b, h, w, c = x.shape
        s = self.size
        shifted = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = shifted.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        q, k, v = self.qkv(win).chunk(3, dim=-1)
        attn = (q @ k.transpose(-2, -1)).view(b, -1, s * s, s * s) + self.attn_mask[None]
        out = (attn.view(-1, s * s, s * s).softmax(-1) @ v).view(b, h // s, w // s, s, s, c)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))


def test_shifted_windows_roll_and_mask() -> None:
    text = _round_trip(ShiftedWindowAttention(), torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert "roll = concat(slice(x, 1, 1), slice(x, 1, 0, 1), dim=1)\n" in text
    assert "    # attn_mask: -100 between positions of a window that come from different regions" in text


def test_take_and_strided_slices_export_to_onnx() -> None:
    """The imported LeViT-like attention (take, slices with a step) as ONNX: a Gather, and the same
    outputs in onnxruntime at another batch size."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from archc.backends.onnx import export_onnx, max_diff
    from archc.backends.torch import build_module

    from archc.elaborate import elaborate_text

    text = _round_trip(OffsetBiasAttention(stride=2), torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(1)))
    graph = elaborate_text(text, "imported.arch")
    module = build_module(graph)
    data = export_onnx(graph, module)
    assert max_diff(graph, module, data) < 1e-4
    assert "Gather" in {n.op_type for n in onnx.load_from_string(data).graph.node}


def test_take_with_a_float_index_is_a_located_error() -> None:
    from archc.elaborate import elaborate_text

    spec = "axis B\nmodel M (x: [B, 8], i: [B, 2]) -> [B, B, 2] {\n    return take(x, i)\n}\n"
    with pytest.raises(ArchError) as err:
        elaborate_text(spec, "take.arch")
    assert "take: the index must be an i64 or i32 tensor, got f32[B, 2]" in err.value.message
    assert err.value.span is not None and (err.value.span.line, err.value.span.col) == (3, 12)


class RotaryAttention(nn.Module):
    """EVA-02's axial rotary embedding on a 2 x 3 grid made for a 4 x 6 one: a table [N, 8 * bands]
    (sin, then cos, of y and x times the frequencies, each angle twice) in a non-persistent buffer,
    applied to the queries as x * cos + rotate(x) * sin."""

    def __init__(self, dim: int = 8, h: int = 2, w: int = 3) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        bands = dim // 4
        freqs = 1.0 / 10000.0 ** (torch.arange(bands, dtype=torch.float32) / bands)
        ys = (torch.arange(h, dtype=torch.float32) / h * (2 * h))[:, None, None] * freqs
        xs = (torch.arange(w, dtype=torch.float32) / w * (2 * w))[None, :, None] * freqs
        grid = torch.cat([ys.expand(h, w, bands), xs.expand(h, w, bands)], dim=-1).reshape(h * w, 2 * bands)
        angles = grid.repeat_interleave(2, -1)
        self.register_buffer("pos_embed", torch.cat([angles.sin(), angles.cos()], dim=-1), persistent=False)

    def forward(self, x: Any) -> Any:
        q = self.q(x)
        sin, cos = self.pos_embed.chunk(2, dim=-1)
        rotated = torch.stack([-q[..., 1::2], q[..., ::2]], dim=-1).reshape(q.shape)
        return q * cos + rotated * sin


def test_rotary_table_is_computed_in_the_spec() -> None:
    text = _round_trip(RotaryAttention(), torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)))
    assert "    # pos_embed: the rotary table of the 2 x 3 grid (scaled to a 4 x 6 grid)" in text
    assert "pos_embed = concat(sin(angles), cos(angles), dim=1)" in text
