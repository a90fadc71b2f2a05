"""Resumable checkpoints: model weights as safetensors, optimizer + RNG state as plain tensors
(`torch.load(..., weights_only=True)`), the loop position as JSON. Each file is written to a temp
name and renamed. A full checkpoint's weights and optimizer files carry the step in their names and
the JSON, renamed into place last, names them: a crash anywhere in a save leaves the previous JSON
pointing at the previous, complete files (which are removed only after the new JSON is in place)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, write) -> None:
    """write(temp path), then rename it to `path`: a crash never leaves a half-written `path`."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model_only(directory: Path, tag: str, model: torch.nn.Module, hashed: bool = False) -> str | None:
    """`tag`.safetensors; hashed: serialized in memory first, and its sha256 returned (what a reader checks the
    file against), at the cost of one more copy of the weights while it is written."""
    import hashlib

    from safetensors.torch import save, save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if not hashed:
        atomic_write(directory / f"{tag}.safetensors", lambda p: save_file(state, str(p)))
        return None
    data = save(state)
    atomic_write(directory / f"{tag}.safetensors", lambda p: p.write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def load_model_only(directory: Path, tag: str, model: torch.nn.Module) -> bool:
    path = directory / f"{tag}.safetensors"
    if not path.is_file():
        return False
    _load_weights(path, model)
    return True


def _load_weights(path: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))


def save(directory: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any]) -> None:
    step = int(state.get("step", 0))
    weights, optim = f"{tag}-{step:09d}", f"{tag}-{step:09d}-optim.pt"
    save_model_only(directory, weights, model)
    extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    atomic_write(directory / optim, lambda p: torch.save(extra, p))
    meta = {**state, "_files": {"weights": weights + ".safetensors", "optimizer": optim}}
    atomic_write(directory / f"{tag}.json", lambda p: p.write_text(json.dumps(meta, default=float)))
    for old in directory.glob(f"{tag}-*"):  # the files of earlier saves of this tag
        if old.name not in meta["_files"].values():
            old.unlink(missing_ok=True)


def load(directory: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    meta_path = directory / f"{tag}.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    # checkpoints of cldg <= 0.1.0 have fixed names and no "_files"
    files = meta.pop("_files", {"weights": f"{tag}.safetensors", "optimizer": f"{tag}-optim.pt"})
    _load_weights(directory / files["weights"], model)
    extra = torch.load(directory / files["optimizer"], weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    return meta
