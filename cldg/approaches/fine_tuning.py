"""Options shared by the objectives that fine-tune the MLE reference (issue 16): unlikelihood, CT, SimCTG on pairs,
DPO, BCO and KTO on (pair, mined negative). Registers no approach; each approach module extends one of these."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.config import option, options_like
from cldg.training.options import TrainOptions

# fine-tuning from the reference: a smaller step than pretraining's 1e-3 (Welleck et al., Su et al. and TRL
# fine-tune at 1e-5 .. 1e-4), a few epochs, the trainer's early stopping on the valid criterion
FINE_TUNE_DEFAULTS = {"lr": 1e-4, "epochs": (5, "Epochs at most (early stopping on the valid criterion).")}


@dataclass
class FineTuneOptions(options_like(TrainOptions, omit=("eval_every",), batch_size=(32, "Pairs per batch."),
                                   **FINE_TUNE_DEFAULTS)):
    max_train_pairs: int = option(0, "Use only this many training pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(1000, "Validate on at most this many pairs (0 = all).")
    lora_r: int = option(0, "hf: references only: train LoRA adapters of this rank, the base frozen (0: all weights).")
    lora_alpha: int = option(16, "LoRA scaling alpha (with --lora-r).")

    def problems(self) -> list[str]:
        return [msg for bad, msg in ((self.max_train_pairs < 0, "--max-train-pairs must be >= 0 (0 = all)"),
                                     (self.max_valid_pairs < 0, "--max-valid-pairs must be >= 0 (0 = all)"),
                                     (self.lora_r < 0, "--lora-r must be >= 0 (0: no LoRA)"),
                                     (self.lora_alpha < 1, "--lora-alpha must be at least 1")) if bad]


@dataclass
class PreferenceOptions(FineTuneOptions):
    beta: float = option(0.1, "beta: the temperature on log p_target - log p_reference (TRL's default 0.1; the "
                         "paper's group-wise loss uses 1).")
    disable_dropout: bool = option(True, "Train the policy without dropout (TRL's disable_dropout), as the "
                                   "reference's log-probs are computed: the first step's loss is then exactly its "
                                   "value at zero log-ratio (DPO log 2).")

    def problems(self) -> list[str]:
        return super().problems() + (["--beta must be > 0"] if not self.beta > 0 else [])
