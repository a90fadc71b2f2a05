"""BCE training of MSN against random negatives, on the shared resumable trainer.

Each step takes B true (context, response) pairs and `neg_ratio` x B negatives: the same contexts with
responses of random other training pairs (text different from the true one). The order of an epoch and
its negatives are functions of (seed, epoch, batch index) only, so a run resumed from a checkpoint sees
exactly the batches an uninterrupted run would have. Validation (R10@1/2/5, MRR on 1 true + 9 random
valid responses) runs every `eval_every` steps; the best weights are kept (criterion 1 - MRR), the
learning rate halves when a check does not improve, training stops after `patience` such checks.
Checkpoints (model safetensors, optimizer + RNG state loaded with weights_only=True, step) live in
`run_dir/resume/` (`cldg.training.trainer.Trainer`); bf16 autocast on CUDA.
BM25 hard negatives are not implemented (random negatives only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cldg.matching.msn import MSN, pad_grouped
from cldg.training.options import TrainOptions

Pair = tuple[list[list[int]], list[int]]  # (context turn ids, response ids), already truncated


@dataclass
class MatchBatch:
    context: torch.Tensor        # [C, U, L] the batch's distinct contexts
    response: torch.Tensor       # [B, Lr]
    context_index: torch.Tensor  # [B] the context of each response
    labels: torch.Tensor         # [B] 1 = true response, 0 = random one

    def to(self, device) -> "MatchBatch":
        return MatchBatch(self.context.to(device), self.response.to(device), self.context_index.to(device),
                          self.labels.to(device))


@dataclass
class MatcherTrainConfig(TrainOptions):
    """The shared training options, plus what MSN's batches and its validation scoring need."""

    neg_ratio: int = 1            # random negatives per true pair
    score_batch_size: int = 256
    seed: int = 13


def epoch_batches(pairs: Sequence[Pair], response_keys: Sequence[Any], batch_size: int, neg_ratio: int,
                  seed: int, epoch: int, start: int = 0):
    """The batches of one epoch from batch index `start`; deterministic in (seed, epoch, batch index).

    response_keys: something comparable per pair (the response text) so a negative never equals the truth.
    """
    n = len(pairs)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    n_batches = -(-n // batch_size)
    for b in range(start, n_batches):
        rows = order[b * batch_size:(b + 1) * batch_size]
        rng = np.random.default_rng([seed, epoch, b + 1])
        contexts = [pairs[i][0] for i in rows]
        responses = [pairs[i][1] for i in rows]
        labels = [1.0] * len(rows)
        for _ in range(neg_ratio):
            for i in rows:
                j = int(rng.integers(n))
                for _ in range(10):  # resample the rare draw of the pair itself / the same text
                    if response_keys[j] != response_keys[i]:
                        break
                    j = int(rng.integers(n))
                contexts.append(pairs[i][0])
                responses.append(pairs[j][1])
                labels.append(0.0)
        ctx, resp, index = pad_grouped(contexts, responses)  # a context is encoded once for all its candidates
        yield MatchBatch(ctx, resp, index, torch.tensor(labels))


def train_msn(model: MSN, train_pairs: Sequence[Pair], train_keys: Sequence[Any], valid_pairs: Sequence[Pair],
              valid_sets: np.ndarray, cfg: MatcherTrainConfig, run_dir: Path, device: torch.device,
              progress=None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train in place with `cldg.training.recipes.matcher.MatcherRecipe`; returns the trainer's summary (steps,
    best step, time, last validation). The model ends with the best validated weights. `on_step(step)` is
    called after each step's loss (tests use it to simulate a crash)."""
    from cldg.training.recipes.matcher import MatcherRecipe
    from cldg.training.trainer import Trainer

    recipe = MatcherRecipe(train_pairs, train_keys, valid_pairs, valid_sets, cfg.batch_size, cfg.neg_ratio, cfg.seed,
                           cfg.score_batch_size, device, on_step)
    trainer = Trainer(model, cfg, run_dir, device, recipe)
    summary = trainer.fit(progress=progress, description="train MSN")
    trainer.load_best()
    return summary
