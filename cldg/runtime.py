"""Process-wide runtime helpers: seeding, device choice, threads. Heavy imports stay inside functions."""
from __future__ import annotations

import os
import random

from cldg.errors import CldgError


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so that a run is reproducible."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str = "auto"):
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CldgError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CldgError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


def offline_environment() -> None:
    """No network at run time: make HF libraries fail fast instead of trying a hub."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
