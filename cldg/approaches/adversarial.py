"""adversarial: REGS, Li et al.'s (2017) adversarial learning for dialogue generation, from the MLE reference."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.config import option, options_like
from cldg.training.options import TrainOptions


@dataclass
class AdversarialOptions(options_like(TrainOptions, omit=("eval_every",), lr=1e-4, epochs=1,
                                      batch_size=(32, "Contexts per batch."))):
    d_pretrain_steps: int = option(200, "Steps that train the discriminator alone first, on human vs generated "
                                   "responses (Li et al. pretrain D; the step count is cldg's choice).")
    d_steps: int = option(1, "Then, in turn: this many discriminator steps (Algorithm 1's D-steps; the count is "
                          "cldg's choice) ...")
    g_steps: int = option(1, "... and this many generator steps (G-steps: policy gradient + teacher forcing; the count "
                          "is cldg's choice).")
    rollouts: int = option(5, "Monte Carlo rollouts per prefix of a sampled response (its per-token rewards; Li et "
                           "al.: N = 5).")
    teacher_forcing_weight: float = option(1.0, "Weight of the teacher-forcing loss on the human responses in a "
                                           "generator step: REINFORCE with reward 1 (Li et al.), summed over each "
                                           "response's tokens and averaged over the batch as the policy-gradient term "
                                           "(0: policy gradient alone).")
    baseline_momentum: float = option(0.9, "The reward baseline: a running mean of the token rewards, this momentum "
                                      "(cldg's choice: Li et al. name a baseline, not how it is estimated).")
    d_embedding_dim: int = option(128, "Discriminator word embedding size.")
    d_hidden_size: int = option(128, "Discriminator GRU size (utterance GRUs per direction, and dialogue GRU).")
    max_len: int = option(20, "Tokens per sampled response at most (rollouts complete up to it; the discriminator "
                          "sees human responses cut to it too). cldg's choice, at most the reference's response "
                          "limit.")
    max_train_pairs: int = option(0, "Use only this many train pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(500, "Validate on at most this many valid pairs (0 = all).")

    def problems(self) -> list[str]:
        sizes = ("d_steps", "g_steps", "rollouts", "d_embedding_dim", "d_hidden_size", "max_len")
        found = [f"--{name.replace('_', '-')} must be at least 1" for name in sizes if getattr(self, name) < 1]
        found += [f"--{name.replace('_', '-')} must be >= 0" for name in ("d_pretrain_steps", "teacher_forcing_weight")
                  if getattr(self, name) < 0]
        if not 0 <= self.baseline_momentum < 1:
            found.append("--baseline-momentum must be in [0, 1)")
        return found


@register_approach("adversarial")
class Adversarial:
    """ADVERSARIAL (REGS): a hierarchical discriminator of human vs generated responses rewards the generator (the MLE
    reference, fine-tuned) by policy gradient with per-token rewards from Monte Carlo rollouts, with teacher forcing."""

    options = AdversarialOptions
    recipe = "cldg.training.recipes.adversarial:AdversarialRecipe"
    makes = "adversarial"
    needs = ("reference",)
    revision = 2  # the discriminator reads each row's real turns then its response
