"""Resumable checkpoints: model weights as safetensors, optimizer + RNG state as plain tensors
(`torch.load(..., weights_only=True)`), the loop position as JSON. Each file is written to a temp
name and renamed, so a crash while saving never leaves a half-written checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model_only(directory: Path, tag: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(directory / f"{tag}.safetensors", lambda p: save_file(state, str(p)))


def load_model_only(directory: Path, tag: str, model: torch.nn.Module) -> bool:
    from safetensors.torch import load_file

    path = directory / f"{tag}.safetensors"
    if not path.is_file():
        return False
    model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))
    return True


def save(directory: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any]) -> None:
    save_model_only(directory, tag, model)
    extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    _atomic(directory / f"{tag}-optim.pt", lambda p: torch.save(extra, p))
    # the JSON is written last: its presence means the whole checkpoint is there
    _atomic(directory / f"{tag}.json", lambda p: p.write_text(json.dumps(state, default=float)))


def load(directory: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    meta = directory / f"{tag}.json"
    if not meta.is_file():
        return None
    load_model_only(directory, tag, model)
    extra = torch.load(directory / f"{tag}-optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    return json.loads(meta.read_text())
