"""The model registry, as timm users expect it: ``archc.create_model("resnet50", **params)``,
``archc.list_models()``, and zoo names wherever the command line takes a spec path.

A zoo name is the stem of a spec in ``specs/models/`` (:data:`archc.zoo.MODELS`). The spec's model
parameters are the keyword arguments (``create_model("resnet50", num_classes=10)``); the Hugging Face
models take their config's names (``create_model("llama", num_hidden_layers=2)``) or a whole config
(``create_model("llama", config=hf_model.config.to_dict())``).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable, Mapping

from archc.errors import ArchError, did_you_mean

__all__ = ["create_model", "list_models", "load_weights", "model_info", "resolve_spec", "zoo_spec"]


def list_models(pattern: str = "*") -> list[str]:
    """The zoo's model names matching a shell-style `pattern` (``list_models("resnet*")``), sorted."""
    from archc.zoo import MODELS

    return sorted(name for name in MODELS if fnmatch.fnmatchcase(name, pattern))


def zoo_spec(name: str) -> Path:
    """The spec file of the zoo model `name`; an ArchError (with a did-you-mean) for another name."""
    from archc.zoo import MODELS, spec_path

    if name not in MODELS:
        raise ArchError(f"no model '{name}' in the zoo", None,
                        did_you_mean(name, MODELS) or f"the zoo has {', '.join(sorted(MODELS))}")
    return spec_path(name)


def is_zoo_name(text: str) -> bool:
    """A bare name (no folder, no ``.arch`` suffix) that the zoo has."""
    from archc.zoo import MODELS

    return text in MODELS and "/" not in text and "\\" not in text and not text.endswith(".arch")


def resolve_spec(text: str) -> Path:
    """What the command line means by a spec argument: a path that exists wins; otherwise a zoo
    name is that model's spec file (the real file, so messages point at it); otherwise the path as
    given (reading it gives the usual error)."""
    path = Path(text)
    if path.exists() or not is_zoo_name(text):
        return path
    found = zoo_spec(text)
    try:  # shown relative where it is below the working folder (specs/models/resnet50.arch)
        return found.relative_to(Path.cwd())
    except (ValueError, OSError):  # elsewhere, or the working folder is gone
        return found


def spec_argument(text: str) -> Path:
    """The ``type`` of a command line's spec argument (:func:`resolve_spec`)."""
    return resolve_spec(text)


def check_spec_exists(path: Path) -> None:
    """An ArchError for a spec argument that names no file: for a bare name, with the zoo's nearest
    name as a hint (``archc check resnet5``: did you mean 'resnet50'?)."""
    if path.exists():
        return
    text = str(path)
    bare = "/" not in text and "\\" not in text and not text.endswith(".arch")
    if bare:
        from archc.zoo import MODELS

        raise ArchError(f"no such spec file: {path.resolve()}, and no model '{text}' in the zoo", None,
                        did_you_mean(text, MODELS) or "`archc list` shows the zoo")


def _hf_converters() -> dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]:
    from archc import zoo

    return {"gpt2": zoo.hf_gpt2_params, "llama": zoo.hf_llama_params, "mixtral": zoo.hf_mixtral_params}


def create_model(name: str, *, target: str = "torch", dtype: str = "f32", config: Mapping[str, Any] | None = None,
                 weights: str | Path | None = None, key_map: str = "archc", **params: Any) -> Any:
    """A module of the zoo model `name` (``archc.list_models()``): `params` override the spec's
    model parameters; `config`, for the Hugging Face models, is their config as a dict
    (``config.to_dict()``), whose entries the spec takes are used (`params` win over it). `target`
    and `dtype` are :func:`archc.compile`'s. The module is freshly initialized, or holds `weights`
    (a ``torch.save`` state_dict or a ``.safetensors`` file, read safely), whose keys `key_map` names
    (``archc``, ``timm`` or ``hf``: see :mod:`archc.weights`), loaded with ``strict=True``."""
    from archc.api import compile

    path = zoo_spec(name)
    if config is not None:
        converters = _hf_converters()
        if name not in converters:
            raise ArchError(f"config= is for the Hugging Face models ({', '.join(sorted(converters))}), "
                            f"not '{name}'", None, "pass the model parameters as keywords")
        try:
            params = {**converters[name](config), **params}
        except ValueError as err:
            raise ArchError(f"{name}: {err}") from None
    model = compile(path, target=target, dtype=dtype, **params)
    if weights is not None:
        load_weights(model, weights, key_map, path)
    return model


def load_weights(model: Any, weights: str | Path, key_map: str = "archc", spec: Path | None = None) -> Any:
    """Load the file `weights` into `model` with ``strict=True``, its keys mapped by `key_map` for the
    zoo spec `spec` (:func:`archc.weights.map_keys`). A mismatch is an ArchError naming the keys."""
    from archc.deploy import load_weights as load_checked
    from archc.weights import map_keys, read_weights

    sd = map_keys(read_weights(Path(weights)), key_map, spec, set(model.state_dict()))
    try:
        load_checked(model, sd, f"the model ({weights})")
    except ArchError as err:
        if key_map == "archc":
            err.hint = err.hint or "a timm or Hugging Face checkpoint needs key_map='timm' or 'hf'"
        raise
    return model


def model_info(name: str) -> dict[str, Any]:
    """What ``archc list`` shows of the zoo model `name`, at its defaults: the reference it
    reproduces, its parameter count (trainable; elaborated only, no weights allocated), its op
    count, its model name and its spec file."""
    from archc.elaborate import elaborate_file
    from archc.zoo import MODELS

    path = zoo_spec(name)
    graph = elaborate_file(path)
    return {"name": name, "reference": MODELS[name], "params": graph.param_count(), "ops": len(graph.nodes),
            "model": graph.name, "spec": str(path)}
