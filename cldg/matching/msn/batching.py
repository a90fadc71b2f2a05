"""Token ids -> MSN input tensors: truncation, padding, one padded copy per distinct context."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from cldg.text.tokenizer import UNK


def truncate_pair(context_ids: Sequence[Sequence[int]], response_ids: Sequence[int], max_turns: int,
                  max_turn_len: int, max_response_len: int = 0) -> tuple[list[list[int]], list[int]]:
    """The last `max_turns` turns, each turn's first `max_turn_len` tokens and the response's first
    `max_response_len` (0: max_turn_len); an utterance that encodes to nothing becomes [UNK] so that it
    still counts as a turn."""
    turns = [list(t[:max_turn_len]) or [UNK] for t in context_ids[-max_turns:]] if max_turns > 0 else []
    return turns, list(response_ids[:max_response_len or max_turn_len]) or [UNK]


def pad_batch(contexts: Sequence[Sequence[Sequence[int]]], responses: Sequence[Sequence[int]],
              device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Already-truncated ids -> (context [C, U, L], response [B, Lr]), trimmed to the longest row.

    Turn slots are left-padded (the last turn at U-1); words are left-aligned in each slot.
    """
    U = max(1, max((len(c) for c in contexts), default=1))
    L = max(1, max((len(t) for c in contexts for t in c), default=1))
    Lr = max(1, max((len(r) for r in responses), default=1))
    ctx = np.zeros((len(contexts), U, L), dtype=np.int64)
    resp = np.zeros((len(responses), Lr), dtype=np.int64)
    for i, c in enumerate(contexts):
        offset = U - len(c)
        for j, t in enumerate(c):
            ctx[i, offset + j, :len(t)] = t
    for i, r in enumerate(responses):
        resp[i, :len(r)] = r
    return torch.from_numpy(ctx).to(device), torch.from_numpy(resp).to(device)


def pad_grouped(contexts: Sequence[Sequence[Sequence[int]]], responses: Sequence[Sequence[int]],
                device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like `pad_batch`, but each distinct context is padded once: (context [C, U, L], response [B, Lr],
    context_index [B]) for `MSN.forward(context, response, context_index)`."""
    slot: dict[tuple, int] = {}
    unique: list = []
    index = []
    for c in contexts:
        key = tuple(map(tuple, c))
        if key not in slot:
            slot[key] = len(unique)
            unique.append(c)
        index.append(slot[key])
    ctx, resp = pad_batch(unique, responses, device)
    return ctx, resp, torch.tensor(index, dtype=torch.long, device=device)
