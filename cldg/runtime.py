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


def configure_runtime(deterministic: bool = True, threads: int = 0) -> int:
    """Make a run reproducible: the same command with the same seed gives byte-identical outputs.

    Floating-point sums depend on how work is split across threads, so the thread count is fixed
    (`threads`, else OMP_NUM_THREADS, else the cores, at most 8) rather than left to whatever the machine offers; torch's
    deterministic algorithms are switched on (on CUDA that also needs the cuBLAS workspace setting,
    set here before any CUDA work). Returns the thread count in use. Measured cost on the demo: see
    the README's Reproducibility section."""
    import torch

    n = threads
    if not n:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        first = omp.split(",")[0].strip()  # OpenMP's nested form "4,2": the outer level is torch's
        if omp and not (first.isdigit() and int(first) > 0):
            raise CldgError(f"OMP_NUM_THREADS={omp!r}: expected a number of threads of at least 1 (or unset it)")
        n = int(first or 0) or min(os.cpu_count() or 1, 8)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # The mode also NaN-fills every torch.empty (a debugging aid, not needed for identical results):
        # measured at +10-50% of a seq2seq training step on 2 cores, all of it in aten::fill_.
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)
    return n


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
