"""SimCTGRecipe: SimCTG (Su et al., 2022), fine-tuning the MLE reference: NLL + objectives.simctg_loss on the last
layer's states at the response positions (for cldg models, the input of their output layer). The best checkpoint
is the one with the lowest objective on the valid pairs (PairsRecipe.validate)."""
from __future__ import annotations

from cldg.models.hf import ResponseOutput
from cldg.training.objectives import simctg_loss
from cldg.training.recipes.pairs import PairsRecipe


class SimCTGRecipe(PairsRecipe):
    progress_keys = ("simctg",)
    term_name = "simctg"
    term_hidden = True

    def term(self, out: ResponseOutput):
        return simctg_loss(out.hidden, out.mask, self.cfg.margin)

    def describe(self) -> str:
        return f"SimCTG (margin {self.cfg.margin}); " + super().describe()

    def finish(self, model, summary: dict):
        model, metrics = super().finish(model, summary)
        return model, {**metrics, "margin": self.cfg.margin}
