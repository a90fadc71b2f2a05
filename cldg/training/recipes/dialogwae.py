"""DialogWAERecipe: Gu et al.'s (2019) DialogWAE training, Algorithm 1's three updates in every step.

Each training step (one Trainer step, one batch):
  1. the critic, `critic_steps` times (n_critic = 5), each on a random train batch of its own (drawn from the seed
     and the step, so a resumed run draws the same ones): ascent on E[D(z)] - E[D(z~)] - lambda GP, z the posterior
     code, z~ the prior code, GP the gradient penalty at points between them (WGAN-GP);
  2. the generators (RecNet, Q, PriNet with its mixture, G) once on the step's batch: descent on the same
     Wasserstein estimate against the updated critic;
  3. the auto-encoder (encoders, RecNet, Q, decoder) on the step's batch: the reconstruction NLL with z from the
     posterior; this is the loss handed to the Trainer, which clips, steps Adam, checkpoints and validates.
Over the steps this is Algorithm 1's cycle (AE, critic x n, generators) begun at the critic. The context and
response encodings are constants in steps 1-2 (the released code detaches them too): only the AE trains them.

Steps 1-2 use RMSprop (the released code's optimiser for both) written out here, its running averages kept as
buffers of the trained module (`DialogWAETraining`), so the Trainer's checkpoints hold them and a resumed run
continues exactly; the Trainer's Adam never sees their gradients (torch.autograd.grad leaves .grad unset).

Validation: the reconstruction NLL per token with z from the posterior's mean (the criterion: what the AE step
minimises) and the NLL with the prior's deterministic code (what decoding relies on), both deterministic.
Not under DDP: the critic and generator steps bypass DDP's gradient averaging.
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn

from cldg.data.batching import Limits
from cldg.text.tokenizer import PAD
from cldg.training.losses import gradient_penalty, nll_loss, wasserstein_estimate
from cldg.training.recipes.mle import MLERecipe
from cldg.training.recipes.mmi import read_split

RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8  # torch.optim.RMSprop's defaults, which the released code uses


def rmsprop_step(params: list[nn.Parameter], grads: list[torch.Tensor | None], square_avgs: list[torch.Tensor],
                 lr: float) -> None:
    """One step of torch.optim.RMSprop (no momentum, not centred, no weight decay), in place; a None gradient
    leaves its parameter and average alone."""
    with torch.no_grad():
        for p, g, avg in zip(params, grads, square_avgs):
            if g is None:
                continue
            avg.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
            p.addcdiv_(g, avg.sqrt().add_(RMSPROP_EPS), value=-lr)


class DialogWAETraining(nn.Module):
    """What the Trainer fits: the `dialogwae` model and the RMSprop averages of the critic and generator steps."""

    def __init__(self, wae):
        super().__init__()
        self.wae = wae
        self.critic_params = list(wae.critic.parameters())
        self.generator_params = wae.generator_parameters()
        for group, params in (("critic", self.critic_params), ("generator", self.generator_params)):
            for i, p in enumerate(params):
                self.register_buffer(f"rmsprop_{group}_{i}", torch.zeros_like(p, memory_format=torch.preserve_format))

    def averages(self, group: str) -> list[torch.Tensor]:
        n = len(self.critic_params if group == "critic" else self.generator_params)
        return [getattr(self, f"rmsprop_{group}_{i}") for i in range(n)]

    def forward(self, batch):  # teacher forcing, as the saved model does it
        return self.wae(batch)


class DialogWAERecipe(MLERecipe):
    checkpoint_is_model = False  # the WAE inside the trained pair is what finish saves
    progress_keys = ("critic", "gp")
    updates_in_loss = True  # the critic and generator updates happen inside loss()

    def __init__(self, train, valid, batch_size, seed, device, critic_steps: int, gp_weight: float,
                 generator_lr: float, critic_lr: float):
        super().__init__(train, valid, batch_size, seed, device)
        self.critic_steps, self.gp_weight = critic_steps, gp_weight
        self.generator_lr, self.critic_lr = generator_lr, critic_lr

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        from cldg.data.batching import EncodedPairs
        from cldg.errors import CldgError
        from cldg.models import build_model
        from cldg.text.tokenizer import DialogueTokenizer
        from cldg.text.vectors import load_word_vectors
        from cldg.training import distributed

        if distributed.current().enabled:
            raise CldgError("dialogwae-train: not supported under torchrun/DDP (its critic and generator steps are "
                            "not averaged across ranks); run it as one process")
        tok = DialogueTokenizer.load(inputs.prepare / "tokenizer.json")
        limits = Limits(cfg.max_context_turns, cfg.max_turn_len, cfg.max_context_len, cfg.max_response_len)
        train = EncodedPairs(tok, *read_split(inputs.prepare, "train", cfg.max_train_pairs, seed), limits)
        valid = EncodedPairs(tok, *read_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed), limits)
        wae = build_model("dialogwae", tok.vocab_size, embedding_dim=cfg.embedding_dim,
                          utterance_size=cfg.utterance_size, context_size=cfg.context_size,
                          latent_size=cfg.latent_size, components=cfg.components,
                          gumbel_temperature=cfg.gumbel_temperature, critic_hidden=cfg.critic_hidden,
                          dropout=cfg.dropout)
        vectors, has_vector = load_word_vectors(inputs.prepare / "word-vectors.safetensors")
        wae.init_embeddings(vectors, has_vector, seed)
        recipe = cls(train, valid, cfg.batch_size, seed, device, cfg.critic_steps, cfg.gp_weight, cfg.generator_lr,
                     cfg.critic_lr)
        return DialogWAETraining(wae), recipe

    def describe(self) -> str:
        return (f"DialogWAE on {len(self.train):,} train / {len(self.valid):,} valid pairs, {self.critic_steps} "
                f"critic steps per step, gradient penalty {self.gp_weight}")

    def critic_batch(self, step: int, i: int):
        """The i-th critic batch of a step: random train pairs, a function of (seed, step, i) only."""
        n = len(self.train)
        rows = random.Random(f"{self.seed}-{step}-{i}").sample(range(n), min(self.batch_size, n))
        return self.train.batch(rows).to(self.device)

    def critic_step(self, training: DialogWAETraining, batch) -> tuple[float, float]:
        """One critic update; (its Wasserstein estimate, its gradient penalty) before the update."""
        wae = training.wae
        with torch.no_grad():
            c = wae.encode_context(batch)
            z_post, z_prior = wae.sample_posterior(wae.encode_response(batch), c), wae.sample_prior(c)

        def critic(z):
            return wae.critic_score(z, c)

        w = wasserstein_estimate(critic(z_post), critic(z_prior))
        gp = gradient_penalty(critic, z_post, z_prior, self.gp_weight)
        grads = torch.autograd.grad(gp - w, training.critic_params)
        rmsprop_step(training.critic_params, list(grads), training.averages("critic"), self.critic_lr)
        return w.item(), gp.item()

    def generator_step(self, training: DialogWAETraining, c: torch.Tensor, x: torch.Tensor) -> float:
        """One update of the posterior and prior networks and generators against the critic; the estimate."""
        wae = training.wae
        w = wasserstein_estimate(wae.critic_score(wae.sample_posterior(x, c), c),
                                 wae.critic_score(wae.sample_prior(c), c))
        grads = torch.autograd.grad(w, training.generator_params, allow_unused=True)
        rmsprop_step(training.generator_params, list(grads), training.averages("generator"), self.generator_lr)
        return w.item()

    def loss(self, model, batch, step: int):
        from cldg.training import distributed

        training = distributed.unwrap(model)
        wae = training.wae
        for i in range(self.critic_steps):
            w_critic, gp = self.critic_step(training, self.critic_batch(step, i))
        c, x = wae.encode_context(batch), wae.encode_response(batch)
        w_generator = self.generator_step(training, c.detach(), x.detach())
        logits = wae.decode_logits(batch, c, wae.sample_posterior(x, c))
        rec, n = nll_loss(logits, batch.response_out, PAD)
        return rec, {"tokens": n, "nll": rec.item(), "rec": rec.item(), "critic": w_critic, "gp": gp,
                     "generator": w_generator}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        wae = model.wae
        totals, n_tokens = [0.0, 0.0], 0
        for start in range(0, len(self.valid), self.batch_size):
            batch = self.valid.batch(range(start, min(start + self.batch_size, len(self.valid)))).to(self.device)
            c = wae.encode_context(batch)
            for j, z in enumerate((wae.sample_posterior(wae.encode_response(batch), c, sample=False),
                                   wae.sample_prior(c, sample=False))):
                nll, n = nll_loss(wae.decode_logits(batch, c, z), batch.response_out, PAD)
                totals[j] += nll.item() * n
            n_tokens += n
        rec, prior = (t / max(n_tokens, 1) for t in totals)
        return {"criterion": rec, "nll": rec, "prior_nll": prior, "prior_ppl": math.exp(min(prior, 50))}

    def finish(self, model, summary: dict):
        return model.wae, {"best_valid_reconstruction_nll": summary["best_criterion"],
                           "components": model.wae.config.components, "critic_steps": self.critic_steps,
                           "gp_weight": self.gp_weight}
