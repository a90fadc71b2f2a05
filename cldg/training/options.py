"""The training loop's options: one dataclass for pretrain, contrastive-train and train-matcher (torch-free).

A stage's Config inherits them with its own defaults, `class Config(options_like(TrainOptions, batch_size=16))`
(cldg.config.options_like), so each is declared once for the command line and the TOML tables, and the stage
hands `options_from(TrainOptions, cfg)` to the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from cldg.config import option


@dataclass
class TrainOptions:
    lr: float = option(1e-3, "Adam learning rate.")
    batch_size: int = option(128, "Examples per batch.")
    epochs: int = option(10, "Epochs at most.")
    max_steps: int = option(0, "Steps at most (0: no limit; whichever ends first).")
    grad_clip: float = option(5.0, "Gradient norm clip.")
    evals_per_epoch: int = option(2, "Validations per epoch.")
    eval_every: int = option(0, "Validate every N steps instead (0: --evals-per-epoch decides).")
    patience: int = option(5, "Checks without improvement before stopping.")
    lr_decay: float = option(0.5, "Factor on the learning rate when the criterion has stopped improving (1: a "
                             "constant rate).", fingerprinted_unless=0.5)
    lr_patience: int = option(0, "Checks without improvement before each --lr-decay (0: at every one). The released "
                              "code's RNNs (ParlAI's reduceonplateau): --lr-patience 3 --lr-decay 0.8.",
                              fingerprinted_unless=0)
    save_every: int = option(0, "Also save a resumable checkpoint every N steps between checks (0: only at checks); "
                             "a kill -9 or a lost machine then costs at most N steps.", fingerprint=False)
    # not an option
    bf16: bool = True             # autocast on CUDA

    def loop_settings(self) -> dict:
        """What the trainer's summary records: every field but batch_size (the recipe batches, not the loop)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainOptions) if f.name != "batch_size"}


def train_option_problems(cfg) -> list[str]:
    """What is wrong with a config's training-loop values, one line each: the Trainer refuses them, and `cldg run`
    asks before any stage runs (a stage Config made with options_like has the fields, not TrainOptions' methods)."""
    checks = [("lr", lambda v: v > 0, "must be positive"), ("batch_size", lambda v: v >= 1, "must be at least 1"),
              ("epochs", lambda v: v >= 1, "must be at least 1"), ("max_steps", lambda v: v >= 0, "must be >= 0"),
              ("evals_per_epoch", lambda v: v >= 1, "must be at least 1"),
              ("eval_every", lambda v: v >= 0, "must be >= 0"), ("patience", lambda v: v >= 1, "must be at least 1"),
              ("save_every", lambda v: v >= 0, "must be 0 (only at checks) or a number of steps"),
              ("lr_decay", lambda v: 0 < v <= 1, "must be in (0, 1] (1: a constant rate)"),
              ("lr_patience", lambda v: v >= 0, "must be >= 0")]
    return [f"--{name.replace('_', '-')} {getattr(cfg, name)}: {msg}" for name, ok, msg in checks
            if hasattr(cfg, name) and not ok(getattr(cfg, name))]
