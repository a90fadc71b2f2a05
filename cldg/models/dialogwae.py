"""DialogWAE (Gu et al., 2019, "DialogWAE: multimodal response generation with conditional Wasserstein auto-encoder").

The context c is encoded as in the CVAE (cldg.models.cvae: a bidirectional GRU per turn, a GRU over the turns) and
the response x by the same turn encoder. A latent z is made in two ways:

    posterior  e ~ N(mu, sigma^2) = RecNet([x; c]),  z = Q(e)
    prior      k ~ Gumbel-softmax(pi(c)),  e ~ N(mu_k, sigma_k^2) = PriNet(c)_k,  z~ = G(e)

(the Gaussian-mixture prior of DialogWAE-GMP, K components), where Q and G are the generators (MLPs). The decoder
GRU starts from [z; c] (its hidden size is context + latent, as in the released code). A critic D([z; c]) separates
posterior from prior codes; the recipe (cldg.training.recipes.dialogwae) trains it with the WGAN-GP loss and the
generators against it, and the auto-encoder by reconstruction (losses in cldg.training.losses).

Defaults are the released code's (guxd/DialogWAE, config_DialogWAE_GMP): embedding 200, hidden 300, z 200, K 3,
Gumbel temperature 0.1, critic hidden 600, dropout 0.5. One change: LayerNorm where the released code has BatchNorm
in RecNet/PriNet and the generators (a batch of one, e.g. decoding a single context, then behaves as in training),
and no normalisation in the critic (Gulrajani et al., 2017: batch norm breaks the per-sample gradient penalty).

Teacher forcing (`forward`, evaluate's reference perplexity) uses the deterministic prior code: the mean of the
most probable component through G. Decoding samples z from the prior once per context (`init_decoding`: from the
context's own generator when the decoder has row seeds, as evaluate's has, so a context's z does not depend on its
batch; else the global torch RNG).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cldg.models import register_model
from cldg.models.base import DialogueModel
from cldg.models.cvae import CVAE
from cldg.text.tokenizer import PAD


@dataclass
class DialogWAEConfig:
    embedding_dim: int = 200
    utterance_size: int = 300   # per direction
    context_size: int = 300
    latent_size: int = 200      # e and z
    components: int = 3         # K of the Gaussian-mixture prior (Gu et al.: 3 on SwDA, 5 on DailyDialog)
    gumbel_temperature: float = 0.1
    critic_hidden: int = 600
    dropout: float = 0.5


def _row_noise(row_generators: list[torch.Generator], pi_logits: torch.Tensor,
               mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gumbel noise [B, K] float32, standard normal noise [B, K, Z] mu's dtype), row b drawn from row_generators[b]
    on the CPU in a fixed order (its K Gumbel numbers, then its K x Z normal ones): a row's noise depends on its
    own generator only."""
    K, shape = pi_logits.size(-1), tuple(mu.shape[1:])
    gumbels, normals = [], []
    for g in row_generators:
        gumbels.append(-torch.empty(K, dtype=torch.float32).exponential_(generator=g).log())  # as F.gumbel_softmax
        normals.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return (torch.stack(gumbels).to(pi_logits.device),
            torch.stack(normals).to(device=mu.device, dtype=mu.dtype))


def mixture_sample(pi_logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, temperature: float,
                   sample: bool = True, row_generators: list[torch.Generator] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(e [B, Z], one-hot component [B, K]) from a Gaussian mixture: mu, logvar [B, K, Z], pi_logits [B, K].

    sample: the component by hard Gumbel-softmax (a draw from softmax(pi_logits); the gradient passes through the
    soft relaxation at `temperature`) and e from its Gaussian; else the most probable component's mean.
    row_generators (one per row): the Gumbel and Gaussian noise of row b come from row_generators[b] (`_row_noise`),
    not from the global torch RNG."""
    if sample and row_generators is not None:
        gumbels, normals = _row_noise(row_generators, pi_logits, mu)
        # F.gumbel_softmax(hard=True) with these Gumbel numbers: the straight-through one-hot
        soft = ((pi_logits.float() + gumbels) / temperature).softmax(-1)
        hard = F.one_hot(soft.argmax(-1), soft.size(-1)).to(soft.dtype)
        choice = (hard - soft.detach() + soft).to(mu.dtype)
        e = mu + normals * torch.exp(0.5 * logvar)
    elif sample:
        choice = F.gumbel_softmax(pi_logits.float(), tau=temperature, hard=True).to(mu.dtype)
        e = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    else:
        choice = F.one_hot(pi_logits.argmax(-1), pi_logits.size(-1)).to(mu.dtype)
        e = mu
    return torch.bmm(choice.unsqueeze(1), e).squeeze(1), choice


def _mlp(sizes: list[int], act: type[nn.Module], norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b)] if norm else []
            layers.append(act())
    return nn.Sequential(*layers)


@register_model("dialogwae")
class DialogWAE(DialogueModel):
    config_class = DialogWAEConfig

    # the CVAE's context and response encoders, unchanged (they need embedding, utterance, context, drop)
    encode_utterances = CVAE.encode_utterances
    encode_context = CVAE.encode_context
    encode_response = CVAE.encode_response

    def __init__(self, vocab_size: int, config: DialogWAEConfig):
        super().__init__(vocab_size, config)
        c = config
        Z, H = c.latent_size, c.context_size
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        self.utterance = nn.GRU(c.embedding_dim, c.utterance_size, batch_first=True, bidirectional=True)
        self.context = nn.GRU(2 * c.utterance_size, H, batch_first=True)
        self.drop = nn.Dropout(c.dropout)
        # RecNet q(e | x, c) and PriNet p(e | c): two tanh layers, then the Gaussian (per component for the prior)
        self.posterior_net = _mlp([2 * c.utterance_size + H, Z, Z], nn.Tanh, norm=True)
        self.posterior_mu, self.posterior_logvar = nn.Linear(Z, Z), nn.Linear(Z, Z)
        self.prior_net = _mlp([H, Z, Z], nn.Tanh, norm=True)
        self.prior_pi = nn.Sequential(nn.Linear(Z, Z), nn.LayerNorm(Z), nn.Tanh(), nn.Linear(Z, c.components))
        self.prior_mu, self.prior_logvar = nn.Linear(Z, Z * c.components), nn.Linear(Z, Z * c.components)
        self.posterior_generator = _mlp([Z, Z, Z, Z], nn.ReLU, norm=True)   # Q
        self.prior_generator = _mlp([Z, Z, Z, Z], nn.ReLU, norm=True)       # G
        self.critic = nn.Sequential(nn.Linear(Z + H, c.critic_hidden), nn.LeakyReLU(0.2),
                                    nn.Linear(c.critic_hidden, c.critic_hidden), nn.LeakyReLU(0.2),
                                    nn.Linear(c.critic_hidden, 1))
        self.decoder = nn.GRU(c.embedding_dim, H + Z, batch_first=True)
        self.output = nn.Linear(H + Z, vocab_size)

    # -- the parts the recipe trains ---------------------------------------------------------------------
    def posterior_noise(self, x: torch.Tensor, c: torch.Tensor, sample: bool = True) -> torch.Tensor:
        h = self.posterior_net(torch.cat([x, c], -1))
        mu, logvar = self.posterior_mu(h), self.posterior_logvar(h)
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu

    def prior_mixture(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pi logits [B, K], mu [B, K, Z], logvar [B, K, Z]) of p(e | c)."""
        h = self.prior_net(c)
        shape = (c.size(0), self.config.components, self.config.latent_size)
        return self.prior_pi(h), self.prior_mu(h).view(shape), self.prior_logvar(h).view(shape)

    def sample_posterior(self, x: torch.Tensor, c: torch.Tensor, sample: bool = True) -> torch.Tensor:
        return self.posterior_generator(self.posterior_noise(x, c, sample))

    def sample_prior(self, c: torch.Tensor, sample: bool = True,
                     row_generators: list[torch.Generator] | None = None) -> torch.Tensor:
        e, _ = mixture_sample(*self.prior_mixture(c), self.config.gumbel_temperature, sample, row_generators)
        return self.prior_generator(e)

    def critic_score(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """D([z; c]) -> [B]."""
        return self.critic(torch.cat([z, c], -1)).squeeze(-1)

    def decode_logits(self, batch, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h0 = torch.cat([z, c], -1).unsqueeze(0)
        out, _ = self.decoder(self.drop(self.embedding(batch.response_in)), h0)
        return self.output(self.drop(out))

    def generator_parameters(self) -> list[nn.Parameter]:
        """What the generator step trains (Gu et al.'s Algorithm 1: RecNet, Q, PriNet, G)."""
        parts = (self.posterior_net, self.posterior_mu, self.posterior_logvar, self.posterior_generator,
                 self.prior_net, self.prior_pi, self.prior_mu, self.prior_logvar, self.prior_generator)
        return [p for part in parts for p in part.parameters()]

    # -- DialogueModel -------------------------------------------------------------------------------------
    def forward(self, batch) -> torch.Tensor:
        c = self.encode_context(batch)
        return self.decode_logits(batch, c, self.sample_prior(c, sample=False))

    def init_decoding(self, batch, row_generators: list[torch.Generator] | None = None) -> dict[str, Any]:
        """z~ from the prior: row b's Gumbel and Gaussian noise from row_generators[b] when given, else from the
        global torch RNG."""
        c = self.encode_context(batch)
        return {"hidden": torch.cat([self.sample_prior(c, row_generators=row_generators), c], -1).unsqueeze(0)}

    def decode_step(self, state, prev_tokens):
        out, h = self.decoder(self.embedding(prev_tokens).unsqueeze(1), state["hidden"])
        return self.output(out[:, 0]), {"hidden": h}
