"""contrastive: group-wise contrastive learning (Cai et al., 2020) from the MLE reference (`cldg contrastive-train`)."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.choices import LOSS_VARIANTS
from cldg.config import option, options_like
from cldg.training.options import TrainOptions

# The paper's optimisation (section 3.2): Adam at 1e-3, validation every half epoch, stop after 5 checks without
# improvement (TrainOptions' defaults). 16 groups are ~200 distinct sequences (more than the paper's 128 pairs); on
# the CPU larger batches lower the sequences/s (32: -7%, 64: -45%, measured on the demo), so 16 is the default.
TRAIN_DEFAULTS = {"batch_size": (16, "Groups per batch (each has up to 4k+1 sequences; 16 groups ~ 200 sequences)."),
                  "epochs": (20, "Epochs at most (the early-stopping rule usually ends training first).")}


@dataclass
class ContrastiveOptions(options_like(TrainOptions, omit=("eval_every",), **TRAIN_DEFAULTS)):
    loss: str = option("eq4", "Contrastive loss: the paper's Eq. 4, Eq. 3, Eq. 2, or the released code's soft form.",
                       choices=LOSS_VARIANTS)
    k: int = option(3, "Group size (at most the k used when mining).")
    no_positive_group: bool = option(False, "Ablation: the pair itself is the only positive.")
    no_negative_group: bool = option(False, "Ablation: one negative per group.")
    no_group: bool = option(False, "Ablation: one positive and one negative per group.")
    response_side_only: bool = option(False, "Ablation: response-side samples only.")
    context_side_only: bool = option(False, "Ablation: context-side samples only.")
    no_matching_scores: bool = option(False, "Ablation: every s+ = 1 and s- = -1 (eq4 becomes eq3).")
    mle_weight: float = option(0.0, "Weight of an MLE term on the pairs themselves.")
    from_scratch: bool = option(False, "Start the target from random weights (with an MLE warm-up).")
    mle_warmup_steps: int = option(0, "MLE-only steps before the contrastive loss (for --from-scratch).")
    beta: float = option(1.0, "Temperature on D = log p_target - log p_reference (the paper: 1; as DPO's beta).")
    nll_anneal: bool = option(False, "The released code's schedule: loss = (1-w) NLL + w contrastive, "
                              "w = (tanh((step * anneal_speed - 3500) / 1000) + 1) / 2.")
    anneal_speed: float = option(1.0, "Steps run this much faster through the --nll-anneal schedule "
                                 "(w = 0.5 at step 3500 / speed).")
    refresh_reference_every: int = option(0, "Replace the reference by a copy of the target every N steps (the "
                                          "released code's option; 0 = never). Its log-probs are then computed per "
                                          "batch; validation stays against the MLE reference.")
    max_valid_groups: int = option(1000, "Validate on at most this many groups (0 = all).")
    # The cached reference log-probs are eval mode's (no dropout). With dropout on in the target, D at step 0 is
    # not 0 but about -0.06 nats a token (demo: mean -1.12, sd 1.59, down to -1.5 for responses of 20+ tokens),
    # which weights long positives up and short negatives down: a length bias the method does not ask for.
    # TRL's DPO turns dropout off for the same reason (disable_dropout).
    disable_dropout: bool = option(True, "Train the target without dropout, as the reference's cached log-probs "
                                   "were computed, so that D starts at exactly 0 (TRL's disable_dropout).",
                                   fingerprinted_unless=False)


@register_approach("contrastive")
class Contrastive:
    """Group-wise contrastive learning: the target beats the frozen reference on mined positive groups and loses
    to it on negative ones (the paper's Eq. 4 by default)."""

    options = ContrastiveOptions
    recipe = "cldg.training.recipes.contrastive:ContrastiveRecipe"
    command = "contrastive-train"
    makes = "contrastive"
    needs = ("reference", "samples")
