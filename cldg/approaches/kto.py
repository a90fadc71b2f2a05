"""kto: KTO (Ethayarajh et al., 2024) with the pair as desirable and its mined negative as undesirable."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import PreferenceOptions
from cldg.config import option


@dataclass
class KTOOptions(PreferenceOptions):
    desirable_weight: float = option(1.0, "Weight of the desirable (pair) term.")
    undesirable_weight: float = option(1.0, "Weight of the undesirable (mined negative) term.")

    def problems(self) -> list[str]:
        bad = self.desirable_weight < 0 or self.undesirable_weight < 0
        return super().problems() + (["--desirable-weight and --undesirable-weight must be >= 0"] if bad else [])


@register_approach("kto")
class KTO:
    """KTO: 1 - sigmoid(beta (D_pair - z0)) and 1 - sigmoid(beta (z0 - D_negative)), z0 the clamped mean log-ratio of
    mismatched (context, another pair's response) pairs, D the log-ratio to the frozen MLE reference."""

    options = KTOOptions
    recipe = "cldg.training.recipes.kto:KTORecipe"
    makes = "kto"
    needs = ("reference", "samples")
