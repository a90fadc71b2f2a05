"""bco: BCO on (pair, mined negative) (TRL's "bco_pair"; Jung et al., 2024), the MLE reference as the reference."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import PreferenceOptions
from cldg.config import option


@dataclass
class BCOOptions(PreferenceOptions):
    batch_delta: bool = option(False, "Shift the rewards by delta = the batch's mean reward, held constant (BCO's "
                               "running mean, per batch so that a resumed run repeats its steps; TRL's bco_pair and "
                               "the paper's eq2 have no shift).")


@register_approach("bco")
class BCO:
    """BCO pair: -log sigmoid(beta D_pair - delta) - log sigmoid(-(beta D_negative - delta)), D the log-ratio to the
    frozen MLE reference; beta 1 and delta 0 is the paper's Eq. 2 on one pair and one negative."""

    options = BCOOptions
    recipe = "cldg.training.recipes.bco:BCORecipe"
    makes = "bco"
    needs = ("reference", "samples")
