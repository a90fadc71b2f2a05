"""KTORecipe: KTO (TRL loss_type "kto") with the pair desirable, its mined negative undesirable, and the reference
point z0 from mismatched pairs (each context with another pair's response)."""
from __future__ import annotations

from cldg.training.objectives import kto_loss
from cldg.training.recipes.pairs import PreferenceBatch, PreferenceRecipe


class KTORecipe(PreferenceRecipe):
    uses_mismatched = True

    def objective(self, logps, batch: PreferenceBatch):
        chosen, rejected, mismatched = logps  # the target's log p(r|c) of the pairs, negatives, mismatched pairs
        return kto_loss(chosen, rejected, batch.ref_chosen, batch.ref_rejected, mismatched, batch.ref_mismatched,
                        self.cfg.beta, self.cfg.desirable_weight, self.cfg.undesirable_weight)
