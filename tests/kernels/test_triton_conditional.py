"""Conditional computation in the kernel packages (#15): the generated model.py imports the
helpers its torch regions call (moe_select, moe_combine, moe_route, fff, ...) from torch_model.py,
and a mixture of block experts runs with generated kernels inside each expert (on its N_e routed
rows) equal to the torch target, in Triton's CPU interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from kernel_harness import ROOT, build_package, full_fp32, on_device, randomize  # noqa: E402

from archc.elaborate import elaborate_file, elaborate_text  # noqa: E402

FFF = """axis B
model M (x: [B, 32]) -> [B, 32] {
    return fff(x, 32, depth=2, leaf=8) >> gelu >> fff_neurons(32, depth=2)
}
"""


@pytest.mark.parametrize("case", ["moe_shared", "moe_neurons", "fff"])
def test_conditional_ops_run_in_the_triton_package(case: str, tmp_path: Path) -> None:
    if case == "fff":
        graph, sizes = elaborate_text(FFF, file="fff.arch"), {"B": 5}
    else:
        graph = elaborate_file(ROOT / "specs/examples/moe_any_expert.arch",
                               overrides={"depth": 1, "ff": case.removeprefix("moe_")})
        sizes = {"B": 2, "T": 9}
    pkg = build_package(graph, "triton", tmp_path)
    torch.manual_seed(0)
    model = getattr(pkg, pkg.__all__[0])().eval()
    randomize(model)
    model, xs = on_device(model, graph, sizes)
    with torch.no_grad(), full_fp32():
        want = super(type(model), model).forward(*xs)  # the torch target's forward
        got = model(*xs)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "def forward" in (Path(pkg.__file__).parent / "model.py").read_text()
