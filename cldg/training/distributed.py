"""DDP under `torchrun`: which rank we are, wrapping the model, barriers. A single process is world 1."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from cldg.errors import CldgError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str = "cpu") -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return current()


def current() -> DistInfo:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch.distributed.barrier()


@contextlib.contextmanager
def begin_on_ranks(store, info: DistInfo, *args, **kwargs):
    """`store.begin(*args, **kwargs)` on every rank of a job: rank 0 takes the artifact's lock and settles its
    .partial first (reuses a committed artifact, starts work made from an earlier input build over), then
    the other ranks open it, so none of them meets work that rank 0 is about to discard. If rank 0 cannot open
    it (bad inputs, a full disk), it tells the others, which stop with one line instead of waiting at a
    barrier until torchrun's timeout. World 1: begin."""
    if info.rank == 0:
        opened = False
        try:
            with store.begin(*args, exclusive=True, **kwargs) as run:
                opened = True
                _rank0_opened(info, True)
                yield run
        finally:
            if not opened:  # store.begin raised: the others are waiting for word
                _rank0_opened(info, False)
    else:
        if not _rank0_opened(info, None):
            raise CldgError(f"rank {info.rank}: rank 0 could not open the artifact (its own error says why); "
                            "stopping too")
        with store.begin(*args, follower=True, **kwargs) as run:
            yield run


def _rank0_opened(info: DistInfo, ok: bool | None) -> bool:
    """Rank 0 sends `ok`, the other ranks receive it (a barrier that carries one flag)."""
    if not info.enabled:
        return bool(ok)
    flag = [ok]
    torch.distributed.broadcast_object_list(flag, src=0)
    return bool(flag[0])


def device_for_rank(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun with CUDA each rank uses its own GPU (LOCAL_RANK)."""
    if device.type == "cuda" and info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (its state_dict keys have no `module.` prefix)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
