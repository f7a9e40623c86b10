"""Build a spec's generated package into a temporary folder, import it, and compare it with the
torch target on the same weights."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_file
from archc.ir.graph import Graph

FULL = os.environ.get("ARCHC_KERNELS_FULL") == "1"  # every spec, size and dtype; else a fixed sample
# Where the kernels run: the CPU (Triton's interpreter) unless a GPU session asks for "cuda"
# (bench/gpu_check.sh, with TRITON_INTERPRET=0).
DEVICE = os.environ.get("ARCHC_TEST_DEVICE", "cpu")
ROOT = Path(__file__).resolve().parents[2]
SMALL = Path(__file__).resolve().parent / "specs" / "small.arch"

# The zoo at test sizes (the brief of issue 7): name -> (spec, overrides).
ZOO: dict[str, tuple[Path, dict[str, Any]]] = {
    "vit": (ROOT / "specs/models/vit_small_patch16_224.arch",
            dict(img_size=32, patch=8, D=64, depth=2, heads=2, num_classes=10)),
    "gpt2": (ROOT / "specs/models/gpt2.arch", dict(vocab=100, dim=64, depth=2, heads=2, max_len=32)),
    "resnet18": (ROOT / "specs/models/resnet18.arch", dict(img_size=64)),
    "llama": (ROOT / "specs/models/llama.arch", dict(vocab_size=100, hidden_size=64, intermediate_size=96,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     num_key_value_heads=2)),
}


def graph(name: str, **extra: Any) -> Graph:
    path, overrides = ZOO[name]
    return elaborate_file(path, overrides={**overrides, **extra})


def small(model: str, **overrides: Any) -> Graph:
    return elaborate_file(SMALL, model=model, overrides=overrides)


def build_package(g: Graph, target: str, folder: Path) -> Any:
    """Write the package for `g` under `folder` and import it; returns the package module."""
    if target == "triton":
        from archc.backends.triton.emit import package
    else:
        from archc.backends.cuda.emit import package
    files = package(g)
    digest = hashlib.sha256("".join(files.values()).encode()).hexdigest()[:12]
    name = f"archc_{target}_{digest}"
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        (out / file).write_text(text)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights, biases and BatchNorm statistics that are not the identity (matrices keep
    their fan-in initialization, so activations stay in range)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or t.dim() > 1:
                continue
            noise = torch.randn(t.shape, generator=gen) * 0.2
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("weight"):
                t.copy_(1.0 + noise)
            else:
                t.copy_(noise)


# (rtol, atol) per dtype, as torch.testing.assert_close reads them: fp32 kernels reorder sums; half
# precision rounds every stored intermediate.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 2e-2), torch.bfloat16: (5e-2, 1e-1)}


def on_device(model: torch.nn.Module, g: Graph, sizes: dict[str, int] | None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model and example inputs on DEVICE, floating tensors in `dtype`."""
    xs = tuple((x.to(dtype) if x.is_floating_point() else x).to(DEVICE) for x in example_inputs(g, sizes))
    return model.to(DEVICE, dtype), xs


def compare(g: Graph, folder: Path, dtype: torch.dtype = torch.float32, sizes: dict[str, int] | None = None,
            target: str = "triton") -> None:
    """The package's output equals the torch target's on random inputs with the same (randomized)
    weights, within TOLERANCE[dtype]. fp32 convolutions and products run in full fp32 on both sides
    (cuDNN would use TF32 for the torch target's convolutions by default on a GPU)."""
    pkg = build_package(g, target, folder)
    torch.manual_seed(0)
    model = getattr(pkg, pkg.__all__[0])().eval()
    randomize(model)
    model, xs = on_device(model, g, sizes, dtype)
    with torch.no_grad(), full_fp32():
        want = super(type(model), model).forward(*xs)  # the torch target's forward
        got = model(*xs)
    assert got.dtype == want.dtype and got.shape == want.shape
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


class full_fp32:
    """No TF32 in cuDNN or cuBLAS inside the block (a no-op on the CPU)."""

    def __enter__(self) -> None:
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved
