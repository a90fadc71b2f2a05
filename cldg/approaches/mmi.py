"""mmi: MMI (Li et al., 2016a): the MLE reference's N-best list reranked with a backward model p(c|r) (MMI-bidi) or
with a language model of responses p(r) penalising the first tokens (MMI-antiLM, `--objective antilm`)."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.config import option, options_like
from cldg.training.options import TrainOptions


def parse_grid(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; raises ValueError on anything else."""
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("empty")
    return values


def parse_thresholds(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3] (token counts >= 0); raises ValueError on anything else."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise ValueError("empty or negative")
    return values


@dataclass
class MMIOptions(options_like(TrainOptions, omit=("eval_every",), batch_size=(128, "Swapped pairs per batch."))):
    nbest: int = option(200, "N-best list size: the forward model's beam (Li et al.: 200).")
    lambdas: str = option("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                          "Grid of lambda, the weight of log p(c|r), tuned on valid BLEU.")
    gammas: str = option("0,0.25,0.5,0.75,1", "Grid of gamma, the weight of the response length, tuned with lambda.")
    objective: str = option("bidi", "bidi: rerank with a backward model p(c|r) (MMI-bidi); antilm: with a language "
                            "model of responses p(r) trained here, penalising its log-prob of the first gamma "
                            "tokens (MMI-antiLM; the --lambdas grid weighs it, --thresholds is gamma's grid).",
                            choices=("bidi", "antilm"))
    thresholds: str = option("1,2,3,4,5,6", "MMI-antiLM: grid of gamma, the number of first response tokens the "
                             "language model's penalty covers (Li et al.'s g(k) = 1 for k <= gamma), tuned with "
                             "lambda.")
    tune_pairs: int = option(200, "Valid pairs that lambda and gamma are tuned on.")
    max_train_pairs: int = option(0, "Train the backward model on only this many pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(2000, "Validate the backward model on at most this many pairs (0 = all).")

    def problems(self) -> list[str]:
        found = [msg for bad, msg in ((self.nbest < 1, "--nbest must be at least 1"),
                                      (self.tune_pairs < 1, "--tune-pairs must be at least 1")) if bad]
        for name in ("lambdas", "gammas"):
            try:
                parse_grid(getattr(self, name))
            except ValueError:
                found.append(f"--{name} {getattr(self, name)!r}: expected comma-separated numbers, e.g. 0,0.5,1")
        try:
            parse_thresholds(self.thresholds)
        except ValueError:
            found.append(f"--thresholds {self.thresholds!r}: expected comma-separated token counts >= 0, e.g. 1,2,3")
        return found


@register_approach("mmi")
class MMI:
    """MMI-bidi: a backward model p(c|r) (the reference's architecture, MLE on swapped pairs) reranks the reference's
    N-best list by log p(r|c) + lambda log p(c|r) + gamma |r|, lambda and gamma tuned on valid; or MMI-antiLM
    (--objective antilm): log p(r|c) - lambda log p(first gamma tokens of r) under a language model of responses."""

    options = MMIOptions
    recipe = "cldg.training.recipes.mmi:MMIRecipe"
    makes = "mmi"
    needs = ("reference",)
