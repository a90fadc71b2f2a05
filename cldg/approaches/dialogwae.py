"""dialogwae: DialogWAE (Gu et al., 2019), a conditional Wasserstein auto-encoder with a GAN in the latent space."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.config import option, options_like
from cldg.training.options import TrainOptions


# sizes and rates: the released code's config_DialogWAE_GMP (guxd/DialogWAE); lr is the auto-encoder's Adam rate
# (the released code: SGD at 1.0), the critic and the generators keep its RMSprop rates
@dataclass
class DialogWAEOptions(options_like(TrainOptions, omit=("eval_every",), batch_size=(32, "Pairs per batch."))):
    embedding_dim: int = option(200, "Word embedding size.")
    utterance_size: int = option(300, "Turn and response encoder GRU size (per direction).")
    context_size: int = option(300, "Context GRU size (the decoder's state is context + latent).")
    latent_size: int = option(200, "Size of the noise e and the latent code z.")
    components: int = option(3, "Components K of the Gaussian-mixture prior (Gu et al.: 3 on SwDA, 5 on DailyDialog; "
                             "1 = DialogWAE without the mixture).")
    gumbel_temperature: float = option(0.1, "Temperature of the Gumbel-softmax that picks the prior's component.")
    critic_hidden: int = option(600, "Hidden size of the critic's two layers.")
    dropout: float = option(0.5, "Dropout on the decoder's inputs and outputs and the encoders' embeddings.")
    critic_steps: int = option(5, "Critic updates per training step (n_critic), each on its own random batch.")
    gp_weight: float = option(10.0, "Weight lambda of the critic's gradient penalty (WGAN-GP).")
    generator_lr: float = option(5e-5, "RMSprop learning rate of the prior, posterior and generator networks.")
    critic_lr: float = option(1e-5, "RMSprop learning rate of the critic.")
    max_context_turns: int = option(10, "Context turns the model sees.")
    max_turn_len: int = option(40, "Tokens per context turn.")
    max_context_len: int = option(120, "Tokens of the flat context.")
    max_response_len: int = option(40, "Tokens of the response (EOS included).")
    max_train_pairs: int = option(0, "Use only this many training pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(2000, "Validate on at most this many pairs (0 = all).")

    def problems(self) -> list[str]:
        sizes = ("embedding_dim", "utterance_size", "context_size", "latent_size", "components", "critic_hidden",
                 "max_context_turns", "max_turn_len", "max_context_len", "max_response_len")
        found = [f"--{name.replace('_', '-')} must be at least 1" for name in sizes if getattr(self, name) < 1]
        found += [msg for bad, msg in ((self.critic_steps < 1, "--critic-steps must be at least 1"),
                                       (self.gp_weight < 0, "--gp-weight must be >= 0"),
                                       (self.gumbel_temperature <= 0, "--gumbel-temperature must be > 0"),
                                       (self.generator_lr <= 0, "--generator-lr must be > 0"),
                                       (self.critic_lr <= 0, "--critic-lr must be > 0"),
                                       (not 0 <= self.dropout < 1, "--dropout must be in [0, 1)")) if bad]
        return found


@register_approach("dialogwae")
class DialogWAE:
    """DIALOGWAE: posterior and Gaussian-mixture prior codes made by generators, a WGAN-GP critic between them in the
    latent space, the decoder trained by reconstruction; decoding samples z from the prior."""

    options = DialogWAEOptions
    recipe = "cldg.training.recipes.dialogwae:DialogWAERecipe"
    makes = "dialogwae"
    needs = ("prepare",)
    revision = 2  # the context encoder reads each row's real turns, not the left-padding slots
