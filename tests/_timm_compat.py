"""Make ``timm`` and ``transformers`` importable next to a torchvision whose native ops fail.

The only torchvision wheel available here is a CUDA build; its ``_C`` extension cannot
be loaded next to the CPU-only torch, and ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist`` (torchvision's Python code
registers fake kernels for its operators whether or not ``_C`` loaded). timm imports
torchvision, and so may transformers.

The fix: before torchvision is first imported, check whether its ``_C`` loads; if not,
declare torchvision's operator schemas with ``torch.library`` (no kernels). Everything
that does not call the detection ops (nms, roi_align, ...) then works; calling one raises
torchvision's own "Couldn't load custom C++ ops" error. Where ``_C`` does load (a
matching torchvision build), nothing is declared.

Use ``import_timm()`` / ``import_transformers()``, or ``install_import_hook()`` (done by
conftest.py) so that any later ``import torchvision`` is covered.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# Schemas as torchvision's C++ sources (torchvision/csrc/ops/*.cpp, vision.cpp) declare them.
TORCHVISION_SCHEMAS: tuple[str, ...] = (
    "_cuda_version() -> int",
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    # Inferred from torchvision/_meta_registrations.py (meta_qroi_align's signature).
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
    "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
    "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    # Older torchvision releases (antialiased resize kernels).
    "_interpolate_bilinear2d_aa(Tensor input, int[] output_size, bool align_corners) -> Tensor",
    "_interpolate_bicubic2d_aa(Tensor input, int[] output_size, bool align_corners) -> Tensor",
    "_interpolate_bilinear2d_aa_backward(Tensor input, int[] output_size, int[] input_size, "
    "bool align_corners) -> Tensor",
    "_interpolate_bicubic2d_aa_backward(Tensor input, int[] output_size, int[] input_size, "
    "bool align_corners) -> Tensor",
)

_library: Any = None  # the torch.library.Library; must stay alive or the schemas vanish
_checked = False


def _native_ops_load() -> bool:
    """True if torchvision is absent or its ``_C`` extension loads (then nothing to patch)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    import torch

    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            lib = Path(folder) / f"_C{suffix}"
            if lib.is_file():
                try:
                    torch.ops.load_library(str(lib))
                except (OSError, ImportError):
                    return False
                return True
    return False


def ensure_torchvision_ops() -> None:
    """Declare torchvision's operator schemas if its native library cannot load. Idempotent."""
    global _library, _checked
    if _checked:
        return
    _checked = True
    if "torchvision" in sys.modules or _native_ops_load():
        return
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in TORCHVISION_SCHEMAS:
        name = schema.split("(", 1)[0]
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
            continue  # already declared by someone else
        except RuntimeError:
            pass
        _library.define(schema)


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """One-shot import hook: runs ``ensure_torchvision_ops`` just before torchvision loads."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torchvision":
            uninstall_import_hook()
            ensure_torchvision_ops()
        return None  # let the normal finders import it


_hook = _TorchvisionHook()


def install_import_hook() -> None:
    """Patch lazily: only a process that imports torchvision pays for importing torch."""
    if "torchvision" not in sys.modules and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def uninstall_import_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def import_timm() -> ModuleType:
    """Import and return ``timm``, working around the torchvision/torch mismatch."""
    ensure_torchvision_ops()
    return importlib.import_module("timm")


def import_transformers() -> ModuleType:
    """Import and return ``transformers``, with the same workaround."""
    ensure_torchvision_ops()
    return importlib.import_module("transformers")
