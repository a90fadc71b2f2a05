"""CTRecipe: contrastive token learning (Jiang et al., 2022), fine-tuning the MLE reference: NLL + alpha x
objectives.ct_loss, the earlier tokens of the response (within --window) as the negatives of each position.
The best checkpoint is the one with the lowest objective on the valid pairs (PairsRecipe.validate)."""
from __future__ import annotations

import torch.nn.functional as F

from cldg.models.hf import ResponseOutput
from cldg.training.objectives import ct_loss
from cldg.training.recipes.pairs import PairsRecipe


class CTRecipe(PairsRecipe):
    progress_keys = ("ct",)
    term_name = "ct"

    def term(self, out: ResponseOutput):
        return ct_loss(F.log_softmax(out.logits.float(), -1), out.targets, out.mask, self.cfg.window or None)

    def term_weight(self) -> float:
        return self.cfg.alpha

    def describe(self) -> str:
        window = f"window {self.cfg.window}" if self.cfg.window else "all earlier tokens"
        return f"CT (alpha {self.cfg.alpha}, {window}); " + super().describe()

    def finish(self, model, summary: dict):
        model, metrics = super().finish(model, summary)
        return model, {**metrics, "alpha": self.cfg.alpha, "window": self.cfg.window}
