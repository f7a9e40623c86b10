"""The model zoo (``specs/models/*.arch``) and the key maps to the checkpoints it mirrors.

Each zoo spec names its parameters as the reference implementation names its state_dict keys,
so most checkpoints load as they are. The exceptions are few and written down here, each as a
function from the reference state_dict to archc's and back:

- ``repvgg_a0`` (timm): timm calls the identity-branch BatchNorm ``identity``; ``identity`` is a
  built-in op in the language and cannot name an instance, so the spec calls it ``identity_bn``.
- ``gpt2`` (Hugging Face ``GPT2LMHeadModel``): the four projections of each block are
  ``Conv1D`` layers, whose weight is stored ``[in, out]``; archc's linear is ``[out, in]`` like
  ``nn.Linear``, so those weights are transposed. The output projection is tied to the token
  embedding: the spec declares the one parameter ``transformer.wte.weight`` for both, so
  Hugging Face's ``lm_head.weight`` (the same tensor) is dropped on the way in and restored on
  the way out. Checkpoints of a bare ``GPT2Model`` (keys without ``transformer.``) and old ones
  with the causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` are accepted too.

    sd = archc.zoo.hf_gpt2_to_archc(GPT2LMHeadModel.from_pretrained("gpt2").state_dict())
    archc.compile(archc.zoo.spec_path("gpt2")).load_state_dict(sd, strict=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from archc import resources

__all__ = ["MODELS", "spec_path", "timm_to_archc", "archc_to_timm", "hf_gpt2_to_archc", "archc_to_hf_gpt2"]

# zoo spec -> the reference model it reproduces
MODELS: dict[str, str] = {
    "resnet18": "timm:resnet18",
    "resnet50": "timm:resnet50",
    "vit_small_patch16_224": "timm:vit_small_patch16_224",
    "convnext_tiny": "timm:convnext_tiny",
    "poolformer_s12": "timm:poolformer_s12",
    "repvgg_a0": "timm:repvgg_a0",
    "gpt2": "transformers:GPT2LMHeadModel",
}

# timm key fragment -> archc key fragment, per zoo spec (empty: the keys are the same)
_TIMM_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "repvgg_a0": ((".identity.", ".identity_bn."),),
}

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # not `.attn.c_attn.bias`


def spec_path(name: str) -> Path:
    """The path of a zoo spec, e.g. ``spec_path("resnet50")``."""
    path = resources.specs_root() / "models" / f"{name}.arch"
    if not path.is_file():
        raise KeyError(f"no zoo spec '{name}'; the zoo has {', '.join(sorted(MODELS))}")
    return path


def _rename(sd: Mapping[str, Any], pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out = {}
    for key, value in sd.items():
        for old, new in pairs:
            key = key.replace(old, new)
        out[key] = value
    return out


def timm_to_archc(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A timm state_dict with its keys renamed for the zoo spec ``name`` (the tensors are shared)."""
    return _rename(state_dict, _TIMM_RENAMES.get(name, ()))


def archc_to_timm(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`timm_to_archc`."""
    return _rename(state_dict, tuple((new, old) for old, new in _TIMM_RENAMES.get(name, ())))


def _transpose(value: Any) -> Any:
    return value.t().contiguous() if hasattr(value, "t") else value.T


def _same(a: Any, b: Any) -> bool:
    """Equal shapes and values (shapes only for tensors on the meta device, which have none)."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    if getattr(a, "is_meta", False) or getattr(b, "is_meta", False):
        return True
    return bool((a == b).all())


def hf_gpt2_to_archc(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face GPT-2 state_dict (``GPT2LMHeadModel`` or ``GPT2Model``) for ``gpt2.arch``:
    ``Conv1D`` weights transposed to ``[out, in]``, the tied ``lm_head.weight`` dropped, the
    causal-mask buffers of old checkpoints dropped, ``transformer.`` prefixed where missing.

    Raises ValueError for a checkpoint whose ``lm_head.weight`` differs from its token embedding
    (an untied head, which the spec does not have)."""
    out: dict[str, Any] = {}
    head = None
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            head = value
            continue
        if not key.startswith("transformer."):
            key = "transformer." + key
        if key.endswith(_MASK_BUFFERS):
            continue
        out[key] = _transpose(value) if key.endswith(_CONV1D) else value
    if head is not None:
        wte = out.get("transformer.wte.weight")
        if wte is None or not _same(head, wte):
            raise ValueError("lm_head.weight is not the token embedding: gpt2.arch ties the two "
                             "(tie_word_embeddings); an untied head does not fit it")
    return out


def archc_to_hf_gpt2(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`hf_gpt2_to_archc`: a ``GPT2LMHeadModel`` state_dict (with
    ``lm_head.weight`` set to the token embedding)."""
    out = {key: _transpose(value) if key.endswith(_CONV1D) else value for key, value in state_dict.items()}
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
