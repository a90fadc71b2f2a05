"""CTRecipe: contrastive token learning (Jiang et al., 2022), fine-tuning the MLE reference: NLL + alpha x
objectives.ct_loss, the earlier tokens of the response (within --window) as the negatives of each position."""
from __future__ import annotations

import torch.nn.functional as F

from cldg.training.objectives import ct_loss
from cldg.training.recipes.pairs import PairBatch, PairsRecipe, token_nll


class CTRecipe(PairsRecipe):
    progress_keys = ("ct",)

    def loss(self, model, batch: PairBatch, step: int):
        out = self.scorer.output(model, batch.inputs)
        nll, n = token_nll(out)
        ct = ct_loss(F.log_softmax(out.logits.float(), -1), out.targets, out.mask, self.cfg.window or None)
        return nll + self.cfg.alpha * ct, {"tokens": n, "nll": nll.item(), "ct": ct.item()}

    def describe(self) -> str:
        window = f"window {self.cfg.window}" if self.cfg.window else "all earlier tokens"
        return f"CT (alpha {self.cfg.alpha}, {window}); " + super().describe()

    def finish(self, model, summary: dict):
        model, metrics = super().finish(model, summary)
        return model, {**metrics, "alpha": self.cfg.alpha, "window": self.cfg.window}
