"""Inference: batched MSN scoring of (context, response) pairs, and the `Matcher` built on it."""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from cldg.matching.msn.batching import pad_grouped, truncate_pair
from cldg.matching.msn.model import MSN


class MSNMatcher:
    """`cldg.matching.base.Matcher` backed by an MSN: probabilities sigmoid(logit) in [0, 1].

    Fast inference: utterances are encoded once per call (contexts repeat across candidates), pairs
    are sorted by length so each batch carries little padding, batches are trimmed to their longest
    row, and scoring runs under `torch.inference_mode` (bf16 autocast on CUDA).
    """

    name = "msn"

    def __init__(self, model: MSN, tokenizer, device: Any = "cpu", batch_size: int = 256):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    def encode(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]):
        unique = list(dict.fromkeys([u for c in contexts for u in c] + list(responses)))
        ids = dict(zip(unique, self.tokenizer.encode_batch(unique))) if unique else {}
        cfg = self.model.config
        return [truncate_pair([ids[u] for u in c], ids[r], cfg.max_turns, cfg.max_turn_len, cfg.response_len)
                for c, r in zip(contexts, responses)]

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        return self.score_ids(self.encode(contexts, responses))

    def score_ids(self, pairs: Sequence[tuple[list[list[int]], list[int]]]) -> np.ndarray:
        """Probabilities for already-truncated (context turn ids, response ids) pairs."""
        return score_pairs(self.model, pairs, self.batch_size, self.device)


def score_pairs(model: MSN, pairs: Sequence[tuple[list[list[int]], list[int]]], batch_size: int,
                device: Any) -> np.ndarray:
    """Batched MSN scoring of (context ids, response ids) pairs -> probabilities [N].

    Pairs that share a context are put side by side (the context is encoded once per batch), and
    contexts of similar shape share a batch, so batches carry little padding.
    """
    device = torch.device(device)
    out = np.zeros(len(pairs), dtype=np.float32)
    groups: dict[tuple, list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault(tuple(map(tuple, c)), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), max((len(t) for t in kv[0]), default=0)))
    order = [i for _, members in ordered for i in sorted(members, key=lambda i: len(pairs[i][1]))]
    was_training = model.training
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            ctx, resp, cidx = pad_grouped([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], device)
            out[idx] = torch.sigmoid(model(ctx, resp, cidx).float()).cpu().numpy()
    model.train(was_training)
    return out
