"""Model registry (fairseq style): models register by name; `build_model` makes one from a config dict.

    @register_model("seq2seq")
    class Seq2Seq(DialogueModel): ...

Saved models are `model.safetensors` + `model.json` ({"name", "config", "vocab_size"}); nothing is
unpickled when loading.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cldg.choices import is_hf_spec
from cldg.errors import CldgError

MODELS: dict[str, type] = {}


def register_model(name: str):
    def wrap(cls):
        cls.name = name
        MODELS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    from cldg.models import cvae, dialogwae, hran, hred, mmi, seq2seq, transformer  # noqa: F401  (registers them)


def model_names() -> list[str]:
    return ["seq2seq", "hred", "hran", "transformer"]


def build_model(name: str, vocab_size: int, **config: Any):
    _load_all()
    if name not in MODELS:
        raise CldgError(f"--model {name}: unknown (one of {', '.join(sorted(MODELS))})")
    cls = MODELS[name]
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(config) - known
    if unknown:
        raise CldgError(f"model {name}: unknown config keys {sorted(unknown)} (known: {sorted(known)})")
    return cls(vocab_size, cls.config_class(**config))


def meta_name(model) -> str:
    """The name model.json records: the registry name, or "hf" for an `hf:PATH` model (its own tokenizer)."""
    return "hf" if is_hf_spec(getattr(model, "name", "")) else model.name


def save_model(directory: Path, model) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if meta_name(model) == "hf":  # a pretrained transformers model saves a transformers directory (models/hf.py)
        return model.save(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "model.json").write_text(json.dumps(model_meta(model), indent=2))


def model_meta(model) -> dict:
    """What model.json holds: what rebuilds `model` (a registry model) before its weights are loaded into it."""
    return {"name": model.name, "config": model.config_dict(), "vocab_size": model.vocab_size}


def is_registry_model(model) -> bool:
    """A model `build_model` rebuilds from its model.json (not an hf: model, nor a training-time wrapper)."""
    _load_all()
    return isinstance(getattr(model, "name", None), str) and model.name in MODELS and hasattr(model, "config_dict")


def load_model(directory: Path, device: Any = "cpu"):
    """Rebuild a model from `model.json` and load its safetensors weights (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.is_file():
        raise CldgError(f"{directory}: no model.json (not a cldg model directory)")
    meta = json.loads(meta_path.read_text())
    if meta["name"] == "hf":
        from cldg.models.hf import load_saved_hf_model

        return load_saved_hf_model(directory, meta, device)
    return load_model_from(meta, load_file(str(directory / "model.safetensors"), device="cpu"), device)


def load_model_from(meta: dict, state: dict, device: Any = "cpu"):
    """A registry model rebuilt from its model.json content `meta` with the weights `state` (eval mode)."""
    model = build_model(meta["name"], meta["vocab_size"], **meta["config"])
    model.load_state_dict(state)
    return model.to(device).eval()


def load_weights(directory: Path, model, device: Any = "cpu"):
    """Load `directory/model.safetensors` into an already built `model`; returns it on `device`, in eval
    mode (for models outside the registry, e.g. the MSN matcher, whose model.json they read themselves)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device="cpu"))
    return model.to(device).eval()
