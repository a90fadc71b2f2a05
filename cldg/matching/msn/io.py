"""Saving and loading an MSN matcher: model.safetensors + model.json through `cldg.models`' own code."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cldg.errors import CldgError
from cldg.matching.msn.model import MSN, MSNConfig
from cldg.matching.msn.scoring import MSNMatcher


def save_msn(directory: Path, model: MSN) -> None:
    """model.safetensors + model.json ({"name": "msn", "config", "vocab_size"}), as every cldg model."""
    from cldg.models import save_model

    save_model(directory, model)


def load_msn(directory: Path, device: Any = "cpu") -> MSN:
    from cldg.models import load_weights

    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.is_file() or not (directory / "model.safetensors").is_file():
        raise CldgError(f"{directory}: no model.json / model.safetensors (not an MSN matcher artifact; "
                        f"run `cldg train-matcher`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("name") != "msn":
        raise CldgError(f"{meta_path}: model is {meta.get('name')!r}, expected 'msn'")
    return load_weights(directory, MSN(MSNConfig(**meta["config"])), device)


def find_tokenizer(artifact_dir: Path) -> Path:
    """The matcher's own copy of tokenizer.json, else the prepare artifact named in its manifest."""
    artifact_dir = Path(artifact_dir)
    own = artifact_dir / "tokenizer.json"
    if own.is_file():
        return own
    manifest = artifact_dir / "manifest.json"
    if manifest.is_file():
        prep = json.loads(manifest.read_text()).get("inputs", {}).get("prepare", {}).get("path")
        if prep and (Path(prep) / "tokenizer.json").is_file():
            return Path(prep) / "tokenizer.json"
    raise CldgError(f"{artifact_dir}: no tokenizer.json here nor in its prepare input")


def load_msn_matcher(artifact_dir: Path, device: Any = "cpu", batch_size: int = 256) -> MSNMatcher:
    """The MSN matcher of a `cldg train-matcher` artifact, ready to score."""
    from cldg.text.tokenizer import DialogueTokenizer

    model = load_msn(artifact_dir, device)
    return MSNMatcher(model, DialogueTokenizer.load(find_tokenizer(artifact_dir)), device, batch_size)
