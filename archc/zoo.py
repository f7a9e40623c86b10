"""The model zoo (``specs/models/*.arch``) and the key maps to the checkpoints it mirrors.

Each zoo spec names its parameters as the reference implementation names its state_dict keys,
so most checkpoints load as they are. The exceptions are few and written down here, each as a
function from the reference state_dict to archc's and back:

- ``gpt2`` (Hugging Face ``GPT2LMHeadModel``): the four projections of each block are
  ``Conv1D`` layers, whose weight is stored ``[in, out]``; archc's linear is ``[out, in]`` like
  ``nn.Linear``, so those weights are transposed. The output projection is tied to the token
  embedding: the spec declares the one parameter ``transformer.wte.weight`` for both, so
  Hugging Face's ``lm_head.weight`` (the same tensor) is dropped on the way in and restored on
  the way out. Checkpoints of a bare ``GPT2Model`` (keys without ``transformer.``) and old ones
  with the causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` are accepted too.

- ``llama`` (Hugging Face ``LlamaForCausalLM``): the keys are Hugging Face's, and the model
  parameters are its config's names (:func:`hf_llama_params` picks them from a config). An
  untied checkpoint loads as it is. With ``tie_word_embeddings`` the head uses
  ``model.embed_tokens.weight`` and has no tensor of its own, so Hugging Face's
  ``lm_head.weight`` (the same tensor) is dropped on the way in and restored on the way out.

    sd = archc.zoo.hf_gpt2_to_archc(GPT2LMHeadModel.from_pretrained("gpt2").state_dict())
    archc.compile(archc.zoo.spec_path("gpt2")).load_state_dict(sd, strict=True)

    model = archc.compile(archc.zoo.spec_path("llama"), **archc.zoo.hf_llama_params(config.to_dict()))
    model.load_state_dict(archc.zoo.hf_llama_to_archc(hf_model.state_dict()), strict=True)

- ``mixtral`` (Hugging Face ``MixtralForCausalLM``): as ``llama``, with the experts stacked as
  Hugging Face stacks them (``experts.gate_up_proj``, ``experts.down_proj``); the model returns the
  logits and the router's auxiliary loss (:func:`hf_mixtral_params` picks its parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from archc import resources

__all__ = ["MODELS", "spec_path", "timm_to_archc", "archc_to_timm", "hf_gpt2_to_archc", "archc_to_hf_gpt2",
           "hf_gpt2_params", "hf_to_archc", "archc_to_hf",
           "LLAMA_CONFIG_KEYS", "hf_llama_params", "hf_llama_to_archc", "archc_to_hf_llama",
           "MIXTRAL_CONFIG_KEYS", "hf_mixtral_params"]

# zoo spec -> the reference model it reproduces
MODELS: dict[str, str] = {
    "resnet18": "timm:resnet18",
    "resnet50": "timm:resnet50",
    "vit_small_patch16_224": "timm:vit_small_patch16_224",
    "convnext_tiny": "timm:convnext_tiny",
    "poolformer_s12": "timm:poolformer_s12",
    "repvgg_a0": "timm:repvgg_a0",
    "gpt2": "transformers:GPT2LMHeadModel",
    "llama": "transformers:LlamaForCausalLM",
    "mixtral": "transformers:MixtralForCausalLM",
}

# timm key fragment -> archc key fragment, per zoo spec (empty: the keys are the same)
_TIMM_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {}

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


# GPT2Config name -> gpt2.arch model parameter
GPT2_CONFIG_KEYS = {"vocab_size": "vocab", "n_embd": "dim", "n_layer": "depth", "n_head": "heads",
                    "n_positions": "max_len", "initializer_range": "initializer_range"}


def hf_gpt2_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model parameters of ``gpt2.arch`` from a Hugging Face ``GPT2Config.to_dict()`` (its
    names mapped by :data:`GPT2_CONFIG_KEYS`; the three dropouts are the spec's one ``pdrop``).

    Raises ValueError for a config that the spec does not build: an MLP width other than
    4 * n_embd, another activation than ``gelu_new``, a LayerNorm epsilon other than 1e-5,
    unequal dropouts, an untied head, or the attention variants (layer-scaled, upcast)."""
    out = {ours: config[theirs] for theirs, ours in GPT2_CONFIG_KEYS.items() if config.get(theirs) is not None}
    n_inner, dim = config.get("n_inner"), config.get("n_embd", 768)
    if n_inner is not None and n_inner != 4 * dim:
        raise ValueError(f"gpt2.arch's MLP is 4 * n_embd = {4 * dim} wide, not n_inner={n_inner}")
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"gpt2.arch's MLP uses gelu_new, not {config['activation_function']!r}")
    if float(config.get("layer_norm_epsilon", 1e-5)) != 1e-5:
        raise ValueError(f"gpt2.arch's LayerNorms use eps 1e-5, not {config['layer_norm_epsilon']}")
    if not config.get("tie_word_embeddings", True):
        raise ValueError("gpt2.arch ties its head to the token embedding; the config unties it")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if config.get(key):
            raise ValueError(f"gpt2.arch does not build {key}")
    drops = {float(config[k]) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop") if config.get(k) is not None}
    if len(drops) > 1:
        raise ValueError(f"gpt2.arch has one dropout rate for all three; the config has {sorted(drops)}")
    if drops:
        out["pdrop"] = drops.pop()
    if "initializer_range" in out:
        out["initializer_range"] = float(out["initializer_range"])
    return out


# the LlamaConfig entries that llama.arch takes as its model parameters, under the same names
LLAMA_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                     "tie_word_embeddings", "attention_bias", "mlp_bias", "initializer_range")


def hf_llama_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model parameters of ``llama.arch`` from a Hugging Face ``LlamaConfig.to_dict()``: the
    entries of :data:`LLAMA_CONFIG_KEYS` it has (``rope_theta`` also from ``rope_parameters``, where
    transformers 5 keeps it; ``head_dim`` None means hidden_size / num_attention_heads).

    Raises ValueError for a config that the spec does not build: another activation than SiLU,
    or a RoPE scaling other than the default (the spec computes the plain rotary tables)."""
    out = {k: config[k] for k in LLAMA_CONFIG_KEYS if config.get(k) is not None}
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"llama.arch computes the default rotary tables, not rope_type {rope['rope_type']!r}")
    if "rope_theta" not in out and rope.get("rope_theta") is not None:
        out["rope_theta"] = rope["rope_theta"]
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama.arch's MLP is SwiGLU (silu), not {config['hidden_act']!r}")
    for key in ("rope_theta", "rms_norm_eps", "initializer_range"):
        if key in out:
            out[key] = float(out[key])
    return out


# Mixtral's config names that mixtral.arch takes (Llama's, less the biases, plus the experts')
MIXTRAL_CONFIG_KEYS = tuple(k for k in LLAMA_CONFIG_KEYS if not k.endswith("_bias")) + (
    "num_local_experts", "num_experts_per_tok")


def hf_mixtral_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model parameters of ``mixtral.arch`` from a Hugging Face ``MixtralConfig.to_dict()``, as
    :func:`hf_llama_params` (whose checks apply). Raises ValueError for what the spec does not
    build: sliding-window attention, or router jitter (training noise the spec does not add).
    Its state_dict loads as it is, and untied (Mixtral's default); a tied one as Llama's
    (:func:`hf_llama_to_archc`)."""
    if config.get("sliding_window") is not None:
        raise ValueError("mixtral.arch has no sliding-window attention; the config has sliding_window="
                         f"{config['sliding_window']}")
    if config.get("router_jitter_noise"):
        raise ValueError(f"mixtral.arch adds no router jitter; the config has {config['router_jitter_noise']}")
    out = {k: v for k, v in hf_llama_params(config).items() if k in MIXTRAL_CONFIG_KEYS}
    out.update({k: config[k] for k in ("num_local_experts", "num_experts_per_tok") if config.get(k) is not None})
    return out


def hf_llama_to_archc(state_dict: Mapping[str, Any], tie_word_embeddings: bool | None = None) -> dict[str, Any]:
    """A ``LlamaForCausalLM`` state_dict for ``llama.arch``: the same keys, less ``lm_head.weight``
    where the head is tied to the token embedding (the config's ``tie_word_embeddings``; when not
    given, a head that shares the embedding's memory is tied)."""
    out = dict(state_dict)
    head, embed = out.get("lm_head.weight"), out.get("model.embed_tokens.weight")
    if head is None or embed is None:
        return out
    tied = _same_storage(head, embed) if tie_word_embeddings is None else tie_word_embeddings
    if tied:
        if not getattr(head, "is_meta", False) and not _same(head, embed):
            raise ValueError("tie_word_embeddings is set but lm_head.weight is not the token embedding")
        del out["lm_head.weight"]
    return out


def _same_storage(a: Any, b: Any) -> bool:
    """One tensor under two names (a tied head): the same memory, shape and strides."""
    try:
        return bool(a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                    and not getattr(a, "is_meta", False))
    except (AttributeError, RuntimeError):
        return False


def archc_to_hf_llama(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`hf_llama_to_archc`: ``lm_head.weight`` set to the token embedding
    when the state_dict has no head of its own (a tied head)."""
    out = dict(state_dict)
    if "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def hf_to_archc(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face state_dict for the zoo spec ``name`` (``gpt2``, ``llama``, ``mixtral``):
    :func:`hf_gpt2_to_archc` or :func:`hf_llama_to_archc`. Raises KeyError for another spec."""
    if name == "gpt2":
        return hf_gpt2_to_archc(state_dict)
    if name in ("llama", "mixtral"):
        return hf_llama_to_archc(state_dict)
    raise KeyError(f"no Hugging Face key map for '{name}'; there is one for gpt2, llama and mixtral")


def archc_to_hf(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`hf_to_archc`."""
    if name == "gpt2":
        return archc_to_hf_gpt2(state_dict)
    if name in ("llama", "mixtral"):
        return archc_to_hf_llama(state_dict)
    raise KeyError(f"no Hugging Face key map for '{name}'; there is one for gpt2, llama and mixtral")
