"""Training criteria, kept apart from the models (fairseq style).

Every loss takes logits / log-probabilities and targets and returns a scalar (and what it logs);
no loss lives inside a model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cldg.choices import LOSS_VARIANTS  # one list, shared with the CLI


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: logits [..., V], targets [...] -> [...] (in float32)."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(target_t | ...) for every position, 0 at padding. logits [B, T, V], targets [B, T] -> [B, T]."""
    return picked_logprobs(logits, targets).masked_fill(targets.eq(pad_id), 0.0)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(r|c) = sum over the response's real tokens (EOS included) of log p(token). -> [B]."""
    return token_logprobs(logits, targets, pad_id).sum(-1)


def nll_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, int]:
    """Token-level negative log-likelihood averaged over non-pad tokens; also returns the token count."""
    n_tokens = int(targets.ne(pad_id).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=pad_id, reduction="sum")
    return loss / max(n_tokens, 1), n_tokens


# -- group-wise contrastive losses (Cai et al., 2020, section 2) -------------------------------------
#
# D = log p_m(r|c) - log p_n(r|c) for every sequence of a group. Groups come as fixed-size slots:
# d_pos, s_pos, pos_mask [G, P] (slot 0 is the pair itself, s+ = 1) and d_neg, s_neg, neg_mask [G, N].
# Missing samples are masked out; each group averages over the samples it has.

S_POS_FLOOR = 1e-6  # log s+ stays finite when a matcher gives a positive a probability of ~0


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim where mask is set, per group; groups with nothing there give 0.
    torch.where (not x * mask) so that an inf in an empty slot can neither leak into the value nor the gradient."""
    m = mask.bool()
    return torch.where(m, x, torch.zeros_like(x)).sum(-1) / m.sum(-1).clamp_min(1).to(x.dtype)


def log_weighted_negative(d: torch.Tensor, s_neg: torch.Tensor) -> torch.Tensor:
    """log(1 + s- * sigmoid(D)) for s- in [-1, 0], computed stably:
    1 + s-*sig(D) = (1 - a) + a * sig(-D) with a = -s-, so the log is logaddexp(log(1-a), log a + logsig(-D))."""
    a = (-s_neg).clamp(0.0, 1.0)
    return torch.logaddexp(torch.log1p(-a), torch.log(a) + F.logsigmoid(-d))


def log_soft(d: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """log(m * (sig(D) - 1/2) + 1/2), m = 2*prob - 1 (the released code's form), computed stably:
    it equals log(prob * sig(D) + (1 - prob) * sig(-D))."""
    p = prob.clamp(0.0, 1.0)
    return torch.logaddexp(torch.log(p) + F.logsigmoid(d), torch.log1p(-p) + F.logsigmoid(-d))


def contrastive_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, s_pos: torch.Tensor, s_neg: torch.Tensor,
                     pos_mask: torch.Tensor | None = None, neg_mask: torch.Tensor | None = None,
                     variant: str = "eq4") -> torch.Tensor:
    """The group-wise contrastive loss, averaged over groups.

    d_pos, s_pos, pos_mask: [G, P]; d_neg, s_neg, neg_mask: [G, N]. A mask left out means every slot is
    present. s+ is floored at S_POS_FLOOR, so a positive the matcher scored ~0 costs a large but finite
    constant (no -inf); the log-sigmoids keep every term finite for any finite D.

    eq4 (the paper's Eq. 4): -(1/|P|) sum log[s+ sig(D+)] - (1/|N|) sum log[1 + s- sig(D-)].
        log[s+ sig(D)] = log s+ + log sig(D): s+ shifts the loss value, not its gradient.
    eq3 (Eq. 3): the same with every s+ = 1 and s- = -1 (no matching scores).
    eq2 (Eq. 2): one positive (slot 0, the pair itself) and one negative (the first negative slot).
    soft: -log(m (sig(D) - 1/2) + 1/2), m = 2 prob - 1, prob = s+ for positives and 1 + s- for negatives:
        the positive weights change the gradient.
    """
    if pos_mask is None:
        pos_mask = torch.ones_like(d_pos, dtype=torch.bool)
    if neg_mask is None:
        neg_mask = torch.ones_like(d_neg, dtype=torch.bool)
    pos_mask, neg_mask = pos_mask.bool(), neg_mask.bool()
    d_pos, d_neg, s_pos, s_neg = d_pos.float(), d_neg.float(), s_pos.float(), s_neg.float()
    if variant == "eq4":
        pos = torch.log(s_pos.clamp_min(S_POS_FLOOR)) + F.logsigmoid(d_pos)
        neg = log_weighted_negative(d_neg, s_neg)
    elif variant == "eq3":
        pos, neg = F.logsigmoid(d_pos), F.logsigmoid(-d_neg)
    elif variant == "eq2":
        pos, neg = F.logsigmoid(d_pos), F.logsigmoid(-d_neg)
        first_pos = torch.zeros_like(pos_mask)
        first_pos[:, 0] = pos_mask[:, 0]
        first_neg = torch.zeros_like(neg_mask)
        # the first available negative of each group
        idx = neg_mask.float().argmax(-1)
        first_neg[torch.arange(neg_mask.size(0)), idx] = neg_mask.any(-1)
        pos_mask, neg_mask = first_pos, first_neg
    elif variant == "soft":
        pos = log_soft(d_pos, s_pos)
        neg = log_soft(d_neg, 1.0 + s_neg)
    else:
        raise ValueError(f"unknown contrastive loss {variant!r} (one of {', '.join(LOSS_VARIANTS)})")
    per_group = -_masked_mean(pos, pos_mask) - _masked_mean(neg, neg_mask)
    return per_group.mean()


def released_anneal_weight(step: int, speed: float = 1.0, center: float = 3500.0, width: float = 1000.0) -> float:
    """The released code's schedule (its `anneal_weight`): w = (tanh((step * speed - center) / width) + 1) / 2,
    clipped to [0, 1]; the loss is (1 - w) * NLL + w * contrastive, so training moves from MLE (w ~ 0.001 at
    step 0) to the contrastive loss (w = 0.5 at step center / speed)."""
    import math

    return min(max((math.tanh((step * speed - center) / width) + 1.0) / 2.0, 0.0), 1.0)


def matching_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A matcher's loss: BCE of its logits against 1 (true response) / 0 (random one); and its accuracy."""
    import torch.nn.functional as F

    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    return loss, ((logits > 0).float() == labels).float().mean().item()


# -- CVAE (Zhao et al., 2017) ------------------------------------------------------------------------------

def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) of diagonal Gaussians, summed over the latent: [B]."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(-1)


def bag_of_words_loss(bow_logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Zhao et al.'s auxiliary loss: -sum over the response's tokens of log softmax(bow_logits)[token], order
    ignored: [B]. bow_logits [B, V] (one distribution per response), targets [B, T] padded with pad_id."""
    logp = torch.log_softmax(bow_logits.float(), -1).gather(1, targets.clamp_min(0))
    return -(logp * targets.ne(pad_id)).sum(-1)


def kl_anneal_weight(step: int, full_kl_step: int) -> float:
    """KL annealing (Bowman et al., 2016) as Zhao et al. use it: the KL weight rises linearly from 0 at step 0 to 1
    at `full_kl_step` (10,000 batches in the released code) and stays 1; 0 steps = no annealing."""
    return 1.0 if full_kl_step <= 0 else min(step / full_kl_step, 1.0)


# -- DialogWAE (Gu et al., 2019): a WGAN-GP in the latent space -------------------------------------------

def wasserstein_estimate(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's estimate of the Wasserstein-1 distance, E[D(real)] - E[D(fake)] (Arjovsky et al., 2017): the
    critic maximises it (its loss is minus this plus the gradient penalty), the generators minimise it."""
    return real_scores.float().mean() - fake_scores.float().mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0,
                     alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): weight * mean over the batch of (||grad D(x^)||_2 - 1)^2 at the points
    x^ = alpha real + (1 - alpha) fake, alpha ~ U[0, 1] per row unless given ([B, 1] or [B]).

    critic: [B, Z] -> [B] scores, each row's score depending on its own row only (so the gradient of their sum
    with respect to x^ is every row's own gradient). The graph is kept (create_graph), so the penalty trains the
    critic. real and fake are taken as constants."""
    real, fake = real.detach().float(), fake.detach().float()
    if alpha is None:
        alpha = torch.rand(real.size(0), 1, device=real.device)
    alpha = alpha.reshape(-1, 1).to(real)
    points = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(points).float().sum(), points, create_graph=True)
    return weight * ((grad.norm(2, dim=-1) - 1.0) ** 2).mean()
