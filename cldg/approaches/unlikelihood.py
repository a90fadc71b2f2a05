"""unlikelihood: unlikelihood training (Welleck et al., 2020) from the MLE reference."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.approaches.fine_tuning import FineTuneOptions
from cldg.config import option


@dataclass
class UnlikelihoodOptions(FineTuneOptions):
    alpha: float = option(1.0, "Weight of the token-level unlikelihood term (Welleck et al.: 1); the best "
                           "checkpoint has the lowest NLL + alpha x term on the valid pairs.")
    sequence_level_rate: float = option(0.0, "Share of steps that apply the sequence-level loss instead, on the "
                                        "model's own greedy responses (Welleck et al. fine-tune with 0.5; 0: token "
                                        "level only).")
    ngram: int = option(4, "Sequence level: the tokens of an n-gram that repeats an earlier one are penalised.")
    max_decode_len: int = option(30, "Sequence level: length of the greedy responses.")

    def problems(self) -> list[str]:
        return super().problems() + [msg for bad, msg in (
            (self.alpha < 0, "--alpha must be >= 0"),
            (not 0 <= self.sequence_level_rate <= 1, "--sequence-level-rate must be in [0, 1]"),
            (self.ngram < 1, "--ngram must be at least 1"),
            (self.max_decode_len < 1, "--max-decode-len must be at least 1")) if bad]


@register_approach("unlikelihood")
class Unlikelihood:
    """Unlikelihood training: NLL plus alpha x the unlikelihood of the earlier tokens of the same response (token
    level); optionally, on a share of the steps, of repeated n-grams in the model's own responses (sequence level)."""

    options = UnlikelihoodOptions
    recipe = "cldg.training.recipes.unlikelihood:UnlikelihoodRecipe"
    makes = "unlikelihood"
    needs = ("reference",)
