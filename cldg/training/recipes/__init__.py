"""Recipes: what a training run trains, apart from how (the loop is `cldg.training.trainer.Trainer`).

A recipe is an object with (torchtune's recipes, made small):

    batches_per_epoch: int                       this rank's batches in one epoch
    batches(epoch, start) -> iterable of batches  epoch `epoch` from batch index `start` (a resumed run
                                                  starts mid-epoch), a function of (seed, epoch) only, each
                                                  batch with `.to(device)`; under DDP this rank's share
    loss(model, batch, step) -> (loss, info)      the scalar to minimise and floats to log ("tokens" feeds
                                                  the tok/s figure, "nll" the perplexity shown); `step` is the
                                                  number of steps done before this one; `model` may be the
                                                  DDP wrapper
    validate(model) -> metrics                    run under no_grad in eval mode; "criterion": lower is better

The losses themselves live in cldg/training/losses.py (never in a model); a recipe only applies them.
Recipes: `mle.MLERecipe` (pretrain), `contrastive.ContrastiveRecipe` (contrastive-train),
`matcher.MatcherRecipe` (train-matcher). This module imports nothing heavy.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol


class Recipe(Protocol):
    batches_per_epoch: int

    def batches(self, epoch: int, start: int) -> Iterable[Any]: ...

    def loss(self, model: Any, batch: Any, step: int) -> tuple[Any, dict[str, float]]: ...

    def validate(self, model: Any) -> dict[str, float]: ...
