"""Reading and writing weights safely: a state_dict saved with ``torch.save`` (read with
``torch.load(weights_only=True)``, which never runs code from the file) or a ``.safetensors`` file
(a JSON header and raw tensor bytes: nothing to execute, the format Hugging Face checkpoints use),
and the key maps from a reference's names to a zoo spec's (``archc``: none, ``timm``, ``hf``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from archc.errors import ArchError
from archc.files import read_regular

__all__ = ["KEY_MAPS", "FORMATS", "MAX_WEIGHTS_BYTES", "read_weights", "map_keys", "weights_bytes"]

MAX_WEIGHTS_BYTES = 64 << 30  # a checkpoint larger than this is not read
KEY_MAPS = ("archc", "timm", "hf")
FORMATS = ("pt", "safetensors")


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ArchError("reading or writing .safetensors needs the safetensors package",
                        hint="pip install 'archc[safetensors]'") from None
    return safetensors.torch


def read_weights(path: Path) -> dict[str, Any]:
    """The state_dict in `path` (``.safetensors`` by its suffix, else a ``torch.save`` file): a
    regular file (a FIFO or a device is refused before it is read), a dict of string keys to tensors
    whose values are all finite. Any other file is an ArchError."""
    import torch

    data = read_regular(path, "weights", MAX_WEIGHTS_BYTES)
    safetensors = path.suffix == ".safetensors"
    try:
        sd = _safetensors().load(data) if safetensors else torch.load(io.BytesIO(data), map_location="cpu",
                                                                       weights_only=True)
    except ArchError:
        raise
    except Exception as err:  # noqa: BLE001  (the readers raise many kinds; all mean "not a checkpoint")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        expected = "a .safetensors file" if safetensors else "a state_dict saved with torch.save"
        raise ArchError(f"{path}: cannot read the weights (expected {expected}): {first}") from None
    if not isinstance(sd, dict):
        raise ArchError(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ArchError(f"{path}: the state_dict has the key {key!r}, which is not a string")
        if not isinstance(value, torch.Tensor):
            raise ArchError(f"{path}: '{key}' is a {type(value).__name__}, not a tensor")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise ArchError(f"{path}: '{key}' holds NaN or infinite values")
    return sd


def map_keys(sd: dict[str, Any], key_map: str, spec: Path | None, param_names: set[str] | None = None) -> dict[str, Any]:
    """`sd` renamed from the reference's keys to the zoo spec's (its file's stem names it):
    ``timm`` (:func:`archc.zoo.timm_to_archc`) or ``hf`` (:func:`archc.zoo.hf_to_archc`: GPT-2's
    Conv1D weights transposed, a tied ``lm_head.weight`` dropped). `param_names`, the model's
    parameter names, say whether a Llama head is tied (it has no ``lm_head.weight`` of its own)."""
    from archc import zoo

    if key_map not in KEY_MAPS:
        raise ArchError(f"unknown key map '{key_map}'", hint=f"the key maps are {', '.join(KEY_MAPS)}")
    name = spec.stem if spec else ""
    if key_map == "timm":
        return zoo.timm_to_archc(name, sd)
    if key_map == "hf":
        if name not in ("gpt2", "llama", "mixtral"):
            raise ArchError(f"--key-map hf is for the zoo's gpt2, llama and mixtral, not '{name}'",
                            hint="compile the zoo spec by its name (archc deploy gpt2 ...)")
        try:
            if name != "gpt2" and param_names is not None:
                return zoo.hf_llama_to_archc(sd, tie_word_embeddings="lm_head.weight" not in param_names)
            return zoo.hf_to_archc(name, sd)
        except ValueError as err:
            raise ArchError(f"the weights do not fit {name}: {err}") from None
    return dict(sd)


def weights_bytes(state_dict: dict[str, Any], fmt: str = "pt") -> bytes:
    """A state_dict as the bytes of a ``torch.save`` file (``pt``) or a ``.safetensors`` file (whose
    tensors may not share memory: a tensor under two names is stored twice)."""
    import torch

    if fmt not in FORMATS:
        raise ArchError(f"unknown weights format '{fmt}'", hint=f"the formats are {', '.join(FORMATS)}")
    if fmt == "pt":
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        return buffer.getvalue()
    seen: set[int] = set()
    plain = {}
    for key, value in state_dict.items():
        value = value.detach()
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        plain[key] = value.clone().contiguous() if ptr in seen or not value.is_contiguous() else value
        if ptr != -1:
            seen.add(ptr)
    return bytes(_safetensors().save(plain))
