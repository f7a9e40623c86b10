"""Property: a randomly generated linear multi-branch block -- a main kxk conv plus branches of
kernel sizes 1/3/5, 1x3/3x1, dilated convs, identity, average pooling, 1x1 -> kxk sequences
(DBB), LayerScale-scaled convs, with groups, strides and BatchNorms -- deploys to exactly one
conv followed by the ReLU, and computes what the train-time block computes in eval mode
(within 1e-4)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.elaborate import elaborate_text
from archc.ir.verify import verify
from archc.passes.manager import DEPLOY, run_pipeline

from passes_harness import TOL, max_error, random_weights


@dataclass(frozen=True)
class Block:
    cin: int
    cout: int
    groups: int
    stride: int
    size: tuple[int, int]
    kernel: int
    branches: tuple[str, ...]
    bn_after: bool

    def text(self) -> str:
        s, g, c = self.stride, self.groups, self.cout
        ho, wo = ((n - 1) // s + 1 for n in self.size)
        lines = [f"    y = x >> conv2d({c}, {self.kernel}, stride = {s}, padding = {self.kernel // 2}, "
                 f"groups = {g}, bias = false) >> batchnorm()"]
        for i, b in enumerate(self.branches):
            if "LS" in b:  # a learned per-channel scale: named, so that each is its own parameter
                lines.append(f"    ls{i} = parameter([{c}, 1, 1], init = 0.5)")
            lines.append(f"    y = y + ({b.replace('LS', f'ls{i}')})")
        tail = " >> batchnorm()" if self.bn_after else ""
        return (f"axis B\n\nmodel Block (x: f32[B, {self.cin}, {self.size[0]}, {self.size[1]}]) "
                f"-> f32[B, {c}, {ho}, {wo}] {{\n" + "\n".join(lines) + f"\n    return relu(y{tail})\n}}\n")


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    cin = draw(st.sampled_from([2, 4, 6]))
    cout = draw(st.sampled_from(sorted({cin, 4, 8})))
    groups = draw(st.sampled_from([g for g in {1, 2, cin} if cin % g == 0 and cout % g == 0]))
    stride = draw(st.sampled_from([1, 2]))
    size = (draw(st.integers(5, 9)), draw(st.integers(5, 9)))
    kernel = draw(st.sampled_from([1, 3, 5]))
    same = cin == cout and stride == 1
    kinds = ["conv", "scale", "seq"] + (["asym"] if kernel >= 3 else []) + (["identity"] if same else []) \
        + (["avg"] if cin == cout and kernel >= 3 else [])
    branches = []
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=4)):
        bn = " >> batchnorm()" if draw(st.booleans()) else ""
        conv = f"stride = {stride}, groups = {groups}"
        k = draw(st.sampled_from([k for k in (1, 3, 5) if k <= kernel]))
        if kind == "conv":
            d = draw(st.sampled_from([d for d in (1, 2) if d * (k - 1) + 1 <= kernel]))
            pad = d * (k - 1) // 2
            branches.append(f"x >> conv2d({cout}, {k}, {conv}, padding = {pad}, dilation = {d}, "
                            f"bias = {str(draw(st.booleans())).lower()}){bn}")
        elif kind == "asym":
            shape, pad = draw(st.sampled_from([("[1, 3]", "[0, 1]"), ("[3, 1]", "[1, 0]")]))
            branches.append(f"x >> conv2d({cout}, {shape}, {conv}, padding = {pad}, bias = false){bn}")
        elif kind == "identity":
            branches.append(f"x{bn or ' >> identity'}")
        elif kind == "avg":
            branches.append(f"x >> avgpool2d(3, stride = {stride}, padding = 1){bn}")
        elif kind == "seq":
            branches.append(f"x >> conv2d({cin}, 1, groups = {groups}, padding = {k // 2}) >> batchnorm() "
                            f">> conv2d({cout}, {k}, {conv}, bias = false){bn}")
        else:
            branches.append(f"(x >> conv2d({cout}, {k}, {conv}, padding = {k // 2})) "
                            f"* LS")
    return Block(cin, cout, groups, stride, size, kernel, tuple(branches), draw(st.booleans()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_random_linear_block_deploys_to_one_conv(block: Block) -> None:
    text = block.text()
    graph = verify(elaborate_text(text, "block.arch"))
    deployed = run_pipeline(graph, DEPLOY)
    assert [n.op for n in deployed.graph.nodes] == ["conv2d", "relu"], text
    conv = deployed.graph.nodes[0].attrs
    assert (conv["kernel"], conv["stride"], conv["groups"]) == (block.kernel, block.stride, block.groups), text
    sd = random_weights(graph)
    err = max_error(graph, sd, deployed.graph, deployed.weights(sd))
    assert err <= TOL, f"max abs error {err:.3g} for\n{text}"
