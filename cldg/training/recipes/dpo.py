"""DPORecipe: DPO on (pair, its mined response-side negative) against the frozen MLE reference (TRL "sigmoid")."""
from __future__ import annotations

from cldg.training.objectives import dpo_loss
from cldg.training.recipes.pairs import PreferenceBatch, PreferenceRecipe


class DPORecipe(PreferenceRecipe):

    def objective(self, logps, batch: PreferenceBatch):
        chosen, rejected = logps[:2]  # the target's log p(r|c) of the pairs and of their negatives
        return dpo_loss(chosen, rejected, batch.ref_chosen, batch.ref_rejected, self.cfg.beta)
