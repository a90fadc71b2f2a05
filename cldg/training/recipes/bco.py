"""BCORecipe: BCO on (pair, its mined response-side negative) against the frozen MLE reference (TRL "bco_pair"),
optionally with BCO's reward shift delta (--batch-delta: the batch's mean reward, held constant)."""
from __future__ import annotations

import torch

from cldg.training.objectives import bco_pair_loss
from cldg.training.recipes.pairs import PreferenceBatch, PreferenceRecipe


class BCORecipe(PreferenceRecipe):

    def objective(self, logps, batch: PreferenceBatch):
        chosen, rejected = logps[:2]  # the target's log p(r|c) of the pairs and of their negatives
        delta = self.delta(chosen, rejected, batch) if self.cfg.batch_delta else 0.0
        return bco_pair_loss(chosen, rejected, batch.ref_chosen, batch.ref_rejected, self.cfg.beta, delta)

    def delta(self, chosen, rejected, batch: PreferenceBatch) -> float:
        """The mean of the rewards beta (log p_target - log p_reference) of every sequence of the batch."""
        with torch.no_grad():
            rewards = torch.cat([chosen - batch.ref_chosen, rejected - batch.ref_rejected])
            return float(self.cfg.beta * rewards.float().mean())
