"""cvae: the conditional VAE of Zhao et al. (2017), trained from scratch on the prepared pairs."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.config import option, options_like
from cldg.training.options import TrainOptions


# the released code (NeuralDialog-CVAE): batch 30, Adam 1e-3, KL weight 0 -> 1 over the first 10,000 batches
@dataclass
class CVAEOptions(options_like(TrainOptions, omit=("eval_every",), batch_size=(30, "Pairs per batch."))):
    embedding_dim: int = option(200, "Word embedding size.")
    utterance_size: int = option(300, "Turn and response encoder GRU size (per direction).")
    context_size: int = option(600, "Context GRU size.")
    decoder_size: int = option(400, "Decoder GRU size.")
    latent_size: int = option(200, "Size of the latent z.")
    dropout: float = option(0.0, "Dropout.")
    full_kl_step: int = option(10000, "KL annealing: its weight rises linearly from 0 to 1 over this many steps "
                               "(0: weight 1 from the start).")
    bow_weight: float = option(1.0, "Weight of the bag-of-words loss (0: plain CVAE without it).")
    max_context_turns: int = option(3, "Context turns the model sees.")
    max_turn_len: int = option(40, "Tokens per context turn.")
    max_context_len: int = option(120, "Tokens of the flat context.")
    max_response_len: int = option(40, "Tokens of the response (EOS included).")
    max_train_pairs: int = option(0, "Use only this many training pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(2000, "Validate on at most this many pairs (0 = all).")

    def problems(self) -> list[str]:
        sizes = ("embedding_dim", "utterance_size", "context_size", "decoder_size", "latent_size", "max_context_turns",
                 "max_turn_len", "max_context_len", "max_response_len")
        found = [f"--{name.replace('_', '-')} must be at least 1" for name in sizes if getattr(self, name) < 1]
        found += [msg for bad, msg in ((self.full_kl_step < 0, "--full-kl-step must be >= 0"),
                                       (self.bow_weight < 0, "--bow-weight must be >= 0"),
                                       (not 0 <= self.dropout < 1, "--dropout must be in [0, 1)")) if bad]
        return found


@register_approach("cvae")
class CVAE:
    """CVAE: a latent z per response, a recognition and a prior network, KL annealing and the bag-of-words loss;
    decoding samples z from the prior."""

    options = CVAEOptions
    recipe = "cldg.training.recipes.cvae:CVAERecipe"
    makes = "cvae"
    needs = ("prepare",)
    revision = 2  # the context encoder reads each row's real turns, not the left-padding slots
