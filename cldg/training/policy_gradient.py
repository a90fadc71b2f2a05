"""REINFORCE for dialogue models (Williams, 1992): sampling, the surrogate loss, Monte Carlo rollouts.

A policy is any registered dialogue model (`init_decoding` / `decode_step` to sample, teacher forcing to score).
For sampled responses y with return R and baseline b the gradient of the expected return is estimated by

    (R - b) * grad sum_t log p(y_t | y_<t, c)

and `reinforce_loss` is the surrogate whose gradient that is: -(R - b) * sum_t log p(y_t | ...), averaged over the
batch (DEEPRL, Li et al. 2016b). With a return per token, R_t (REGS, Li et al. 2017: Monte Carlo rollouts score
every prefix), the sum is sum_t (R_t - b) log p(y_t | ...).

Sampling bans what decoding bans (PAD, BOS, SEP, UNK; EOS at the first step, evaluate's --min-len 1), and
`policy_logprobs` scores the tokens under the same constrained distribution and in the same mode (eval: no dropout;
gradients flow), so the estimate is that of the policy that actually samples. Dropout stays for the MLE / teacher
forcing term, `teacher_forcing_loss`: REINFORCE with reward 1 on the human responses (Li et al. 2017's teacher
forcing), so it is a per-sequence sum over tokens averaged over the batch, the scale of `reinforce_loss`, not the
per-token mean of `losses.nll_loss`.

Rewards are scored in float32 (`rollout_rewards` and the recipes turn the Trainer's bf16 autocast off for them).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from cldg.data.batching import DialogueBatch
from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK

BANNED = (PAD, BOS, SEP, UNK)  # never part of a response (cldg.decoding.search bans the same)


class PolicyTrainee(nn.Module):
    """What the Trainer fits for a policy-gradient approach: the policy (the model the artifact saves), optionally a
    discriminator, and the running-mean reward baseline as buffers, so that checkpoints and resume carry them.
    `forward` is the policy's teacher forcing."""

    def __init__(self, policy: nn.Module, discriminator: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.discriminator = discriminator
        self.register_buffer("baseline", torch.zeros((), dtype=torch.float64))
        self.register_buffer("baseline_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # loss calls so far

    def forward(self, batch: DialogueBatch) -> torch.Tensor:
        return self.policy(batch)

    def advantage(self, rewards: torch.Tensor, mask: torch.Tensor | None = None, momentum: float = 0.9) -> torch.Tensor:
        """rewards - b with b the baseline before this batch, then b moves towards the batch's mean reward
        (exponential moving average; the first batch sets it). `mask` picks the rewards that count in the mean."""
        real = rewards[mask] if mask is not None else rewards
        mean = real.double().mean() if real.numel() else self.baseline
        b = self.baseline.clone() if self.baseline_seen > 0 else mean
        self.baseline.copy_(mean if self.baseline_seen == 0 else momentum * self.baseline + (1 - momentum) * mean)
        self.baseline_seen += 1
        return rewards - b.to(rewards.dtype)


@contextmanager
def eval_mode(model: nn.Module):
    """`model` and its submodules in eval mode (no dropout) for the duration; each module's own mode is restored
    after. Gradients are untouched: what runs inside still backpropagates unless under no_grad."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def float32_scoring(device) -> torch.autocast:
    """Autocast off on `device`'s type: rewards scored in float32 under the Trainer's bf16 autocast."""
    return torch.autocast(torch.device(device).type, enabled=False)


def load_cldg_reference(directory, command: str, device):
    """The reference model of `directory` as a cldg DialogueModel (eval mode); anything else (an hf: model, whose
    artifact has no cldg limits or decoding state) is one CldgError line."""
    from cldg.errors import CldgError
    from cldg.models import load_model
    from cldg.models.base import DialogueModel

    meta_path = Path(directory) / "model.json"
    try:
        name = json.loads(meta_path.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    refused = (f"{command}: the reference {directory} is {{}}; DEEPRL and ADVERSARIAL fine-tune a cldg dialogue model "
               "(seq2seq, hred, hran, transformer: cldg pretrain without --model hf:...)")
    if name == "hf":
        raise CldgError(refused.format("an hf: model"))
    model = load_model(directory, device)
    if not isinstance(model, DialogueModel):
        raise CldgError(refused.format(f"a {getattr(model, 'name', type(model).__name__)} model"))
    return model


def constrained_logits(logits: torch.Tensor, first_step: torch.Tensor | bool) -> torch.Tensor:
    """logits [..., V] with the banned tokens at -inf; EOS too where `first_step` (no empty response)."""
    logits = logits.float().clone()
    logits[..., list(BANNED)] = float("-inf")
    eos = logits[..., EOS]
    logits[..., EOS] = torch.where(torch.as_tensor(first_step, device=logits.device), float("-inf"), eos)
    return logits


@torch.no_grad()
def continue_sampling(model, state: dict, prev: torch.Tensor, max_len: int, first_step: bool = False,
                      greedy: bool = False) -> torch.Tensor:
    """Up to `max_len` tokens from a decoding state whose next input is `prev` [R]: [R, L] token ids, PAD after each
    row's EOS (a row that reaches max_len has no EOS). Draws from the global torch RNG (checkpointed by the Trainer)."""
    done = torch.zeros_like(prev, dtype=torch.bool)
    out = []
    for step in range(max_len):
        logits, state = model.decode_step(state, prev)
        logits = constrained_logits(logits, first_step and step == 0)
        nxt = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
        nxt = nxt.masked_fill(done, PAD)
        out.append(nxt)
        done |= nxt == EOS
        if bool(done.all()):
            break
        prev = torch.where(done, torch.full_like(nxt, EOS), nxt)
    return torch.stack(out, 1) if out else prev.new_full((prev.size(0), 0), PAD)


def sample_responses(model, batch: DialogueBatch, max_len: int, greedy: bool = False) -> torch.Tensor:
    """One sampled (or greedy) response per context: [B, L] with EOS, PAD after it. Eval mode (no dropout)."""
    with eval_mode(model):
        prev = torch.full((batch.size,), BOS, dtype=torch.long, device=batch.context.device)
        return continue_sampling(model, model.init_decoding(batch), prev, max_len, first_step=True, greedy=greedy)


def with_responses(batch: DialogueBatch, tokens: torch.Tensor) -> DialogueBatch:
    """`batch`'s contexts with `tokens` [B, L] (EOS and PAD as sampled) as the responses, for teacher forcing."""
    response_in = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], 1)
    response_in = response_in.masked_fill(response_in.eq(EOS), PAD)  # as collate pads it
    return DialogueBatch(batch.context, batch.context_turns, response_in, tokens)


def policy_logprobs(model, batch: DialogueBatch, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t, context) [B, L] under the sampling distribution, 0 at PAD; with grad.

    In eval mode, as `sample_responses` samples (dropout would score another policy than the one that sampled);
    the modes are restored after."""
    with eval_mode(model):
        logits = model(with_responses(batch, tokens))
    first_step = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    first_step[:, 0] = True
    logp = torch.log_softmax(constrained_logits(logits, first_step), -1)
    picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(tokens.eq(PAD), 0.0)


def reinforce_loss(token_logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate -(R - b) * sum_t log p(y_t), averaged over the batch.

    token_logp [B, T] (0 at padding); advantage [B] (one return per sequence: DEEPRL) or [B, T] (a return per
    token: REGS). The advantage is a constant: no gradient flows into the reward or the baseline."""
    adv = advantage.detach().to(token_logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    return -(adv * token_logp).sum() / max(token_logp.size(0), 1)


def teacher_forcing_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """The MLE / teacher-forcing term of a policy-gradient step: -sum_t log p(y_t | y_<t, c) of the human responses,
    summed over each response's tokens and averaged over the batch, i.e. `reinforce_loss` with reward 1 (Li et al.
    2017's teacher forcing: the same per-sequence update as the generator's, reward 1). Not `losses.nll_loss`'s
    per-token mean, whose weight against the policy-gradient sum would shrink as 1/|y|.
    Returns (loss, the per-token mean NLL as a float for the log and perplexity, the token count)."""
    from cldg.training.losses import token_logprobs

    token_logp = token_logprobs(logits.float(), targets, PAD)
    n = int(targets.ne(PAD).sum())
    loss = reinforce_loss(token_logp, torch.ones(token_logp.size(0), device=token_logp.device))
    return loss, loss.item() * token_logp.size(0) / max(n, 1), n


@torch.no_grad()
def rollout_rewards(model, batch: DialogueBatch, tokens: torch.Tensor, n_rollouts: int, max_len: int,
                    score) -> torch.Tensor:
    """REGS's per-token rewards (Li et al. 2017, section 3.2): for each prefix y_1..y_t of each sampled response,
    `n_rollouts` completions sampled from `model` and the mean of their scores; the whole response is scored once.

    tokens [B, T] as `sample_responses` gives them; score(rows [M], responses [M, L]) -> [M] (e.g. the
    discriminator's probability of human; rows index the batch's contexts), called with autocast off (float32
    scores). Returns [B, T], 0 at padding."""
    def scored(rows, responses):
        with float32_scoring(responses.device):
            return score(rows, responses).float()

    with eval_mode(model):
        return _rollout_rewards(model, batch, tokens, n_rollouts, max_len, scored)


def _rollout_rewards(model, batch, tokens, n_rollouts, max_len, score):
    B, T = tokens.shape
    lengths = tokens.ne(PAD).sum(1)
    rewards = torch.zeros(B, T, device=tokens.device)
    rows = torch.arange(B, device=tokens.device)
    has = lengths > 0
    rewards[rows[has], lengths[has] - 1] = score(rows[has], tokens[has])  # whole responses: D itself
    state, prev = model.init_decoding(batch), torch.full((B,), BOS, dtype=torch.long, device=tokens.device)
    for t in range(T - 1):
        _, state = model.decode_step(state, prev)  # state has read BOS y_1 .. y_t-1; y_t comes next
        prev = tokens[:, t]
        open_rows = rows[(t < lengths - 1)]  # rows whose prefix y_1..y_t is not yet the whole response
        if open_rows.numel() == 0:
            break
        index = open_rows.repeat_interleave(n_rollouts)
        tails = continue_sampling(model, model.reorder_state(state, index), prev.index_select(0, index),
                                  max(max_len - t - 1, 0))
        completed = torch.cat([tokens.index_select(0, index)[:, :t + 1], tails], 1)
        scores = score(index, completed).view(-1, n_rollouts).mean(1)
        rewards[open_rows, t] = scores
    return rewards


def discriminator_loss(human_logits: torch.Tensor, generated_logits: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of a discriminator: human responses labelled 1, generated ones 0, averaged over both;
    and its accuracy (logit > 0 read as human)."""
    import torch.nn.functional as F

    logits = torch.cat([human_logits, generated_logits]).float()
    labels = torch.cat([torch.ones_like(human_logits), torch.zeros_like(generated_logits)]).float()
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    return F.binary_cross_entropy_with_logits(logits, labels), accuracy
