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

    progress_keys: tuple[str, ...]               optional: `info` entries the progress bar shows beside
                                                  the loss (e.g. ("kl", "bow"))
    updates_in_loss: bool                        optional, default False: True when `loss` itself changes
                                                  the model's weights or buffers or draws from the RNG
                                                  before the trainer's optimizer step (critic or generator
                                                  updates, baselines, sampling); the trainer then keeps a
                                                  copy of them from before each step and puts it back when
                                                  Ctrl-C stops a step halfway, so the rerun replays the
                                                  step once, not on top of its half
    checkpoint_is_model: bool                    optional, default True: False when `finish` makes another
                                                  model of the trained one (MMI joins the backward model to
                                                  its forward one); the trainer then writes no
                                                  resume/model.json, and `cldg evaluate` refuses the run's
                                                  checkpoints before it ends (they are not the model it saves)

The losses themselves live in cldg/training/losses.py and cldg/training/objectives.py (never in a model); a recipe
only applies them. Recipes: `mle.MLERecipe` (pretrain; `pairs.PairsRecipe` for an hf: model),
`contrastive.ContrastiveRecipe` (contrastive-train; `hf_contrastive.HFContrastiveRecipe` for an hf: reference),
`matcher.MatcherRecipe` (train-matcher), and the recipes of the approaches the generic stage trains
(cldg/stages/train.py: `mmi.MMIRecipe`, `cvae.CVAERecipe`, `deeprl.DeepRLRecipe`,
`adversarial.AdversarialRecipe`; issue 16's `unlikelihood`, `ct`, `simctg` on `pairs.PairsRecipe` and `dpo`,
`bco`, `kto` on `pairs.PreferenceRecipe`), which also have

    setup(cfg, inputs: TrainInputs, seed, device) -> (model, recipe)   classmethod: the model to fit and
                                                  the recipe, from the approach's options and its inputs
    finish(model, summary) -> (model, metrics)    after the fit (best weights loaded): the registry model
                                                  the artifact saves (evaluate, chat load it) and what its
                                                  metrics.json adds to the trainer's summary
    describe() -> str                             one line printed before training

This module imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol


class Recipe(Protocol):
    batches_per_epoch: int

    def batches(self, epoch: int, start: int) -> Iterable[Any]: ...

    def loss(self, model: Any, batch: Any, step: int) -> tuple[Any, dict[str, float]]: ...

    def validate(self, model: Any) -> dict[str, float]: ...


@dataclass
class TrainInputs:
    """What the generic stage hands a recipe's `setup`: plain paths and configs (the library never reads the
    artifact store). `dirs` and `configs` are keyed by artifact name (`reference`, `samples`, ...)."""
    prepare: Path                                  # the prepare artifact: tokenizer, pairs, word vectors
    dirs: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)
