"""SimCTGRecipe: SimCTG (Su et al., 2022), fine-tuning the MLE reference: NLL + objectives.simctg_loss on the last
layer's states at the response positions (for cldg models, the input of their output layer)."""
from __future__ import annotations

from cldg.training.objectives import simctg_loss
from cldg.training.recipes.pairs import PairBatch, PairsRecipe, token_nll


class SimCTGRecipe(PairsRecipe):
    progress_keys = ("simctg",)

    def loss(self, model, batch: PairBatch, step: int):
        out = self.scorer.output(model, batch.inputs, hidden=True)
        nll, n = token_nll(out)
        margin = simctg_loss(out.hidden, out.mask, self.cfg.margin)
        return nll + margin, {"tokens": n, "nll": nll.item(), "simctg": margin.item()}

    def describe(self) -> str:
        return f"SimCTG (margin {self.cfg.margin}); " + super().describe()

    def finish(self, model, summary: dict):
        model, metrics = super().finish(model, summary)
        return model, {**metrics, "margin": self.cfg.margin}
