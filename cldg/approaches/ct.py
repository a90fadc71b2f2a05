"""ct: contrastive token learning (Jiang et al., 2022) from the MLE reference."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import FineTuneOptions
from cldg.config import option


@dataclass
class CTOptions(FineTuneOptions):
    alpha: float = option(1.0, "Weight of the contrastive token term (Jiang et al.: 1); the best checkpoint "
                           "has the lowest NLL + alpha x term on the valid pairs.")
    window: int = option(0, "Negatives: the distinct tokens among this many preceding ones (0: all of them).")

    def problems(self) -> list[str]:
        return super().problems() + [msg for bad, msg in ((self.alpha < 0, "--alpha must be >= 0"),
                                                          (self.window < 0, "--window must be >= 0 (0 = all)")) if bad]


@register_approach("ct")
class CT:
    """Contrastive token learning: NLL plus alpha x log(1 + sum over the earlier tokens v of exp(z_v - z_y)), which
    pushes the tokens already said below the right one."""

    options = CTOptions
    recipe = "cldg.training.recipes.ct:CTRecipe"
    makes = "ct"
    needs = ("reference",)
