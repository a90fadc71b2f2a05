"""simctg: SimCTG (Su et al., 2022) from the MLE reference; decode it with contrastive search (hf: models)."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import FineTuneOptions
from cldg.config import option


@dataclass
class SimCTGOptions(FineTuneOptions):
    margin: float = option(0.5, "rho, the margin between a state's similarity to itself and to the other states "
                           "(Su et al.: 0.5). The best checkpoint has the lowest NLL + margin loss on the valid "
                           "pairs.")

    def problems(self) -> list[str]:
        return super().problems() + (["--margin must be in [0, 2]"] if not 0 <= self.margin <= 2 else [])


@register_approach("simctg")
class SimCTG:
    """SimCTG: NLL plus a margin loss that spreads the last layer's states of a response apart (cosine)."""

    options = SimCTGOptions
    recipe = "cldg.training.recipes.simctg:SimCTGRecipe"
    makes = "simctg"
    needs = ("reference",)
