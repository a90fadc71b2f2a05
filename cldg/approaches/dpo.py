"""dpo: DPO (Rafailov et al., 2023) on (pair, mined negative), the MLE reference as the reference model."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import PreferenceOptions


@dataclass
class DPOOptions(PreferenceOptions):
    pass


@register_approach("dpo")
class DPO:
    """DPO: -log sigmoid(beta (log-ratio of the pair - log-ratio of its worst mined response-side negative)), the
    log-ratios against the frozen MLE reference (TRL's "sigmoid" loss)."""

    options = DPOOptions
    recipe = "cldg.training.recipes.dpo:DPORecipe"
    makes = "dpo"
    needs = ("reference", "samples")
