"""The objectives that followed group-wise contrastive learning (issue 16), each a plain function on log-probs.

Token level (lprobs [B, T, V] = log-softmax of the logits at the response positions, targets [B, T],
mask [B, T] True at real tokens; each returns the mean over real tokens, to add to the NLL with a weight):
- `unlikelihood_token_loss`: Welleck et al. (2020), Eq. 4: -sum_{c in C_t} log(1 - p(c | y_<t)), with
  C_t = the distinct earlier tokens of the same response that differ from y_t.
- `unlikelihood_sequence_loss` (+ `repeated_ngram_mask`): the sequence-level variant (Eq. 7): on a
  continuation the model decoded itself, -log(1 - p(y_t)) for every token inside an n-gram seen before.
- `ct_loss`: Jiang et al. (2022), contrastive token learning: log(1 + sum_{v in S_t} exp(z_v - z_{y_t})), S_t
  the distinct tokens among the `window` preceding ones (all of them when None), y_t excluded. As a
  difference of logits it is a difference of log-probs, so it takes lprobs.
- `simctg_loss`: Su et al. (2022), the contrastive margin on hidden states: for every pair i != j of real
  positions, max(0, rho - s(h_i, h_i) + s(h_i, h_j)) with s the cosine, averaged over the pairs.
  Decoding with it is contrastive search (cldg/decoding/contrastive_search.py).

Sequence level (per-sequence log p(r|c) of the target, `policy_*`, and of the frozen reference, `ref_*`,
for the pair (chosen) and a mined negative (rejected)), as TRL 1.16 defines them (DPOTrainer._compute_loss,
KTOTrainer._compute_loss); TRL computes them inside its trainers, so they are transcribed here:
- `dpo_loss` (loss_type "sigmoid"): -log sig(beta * ((pc - rc) - (pr - rr))).
- `bco_pair_loss` (loss_type "bco_pair"): -log sig(beta (pc - rc) - delta) - log sig(-(beta (pr - rr) - delta)).
  TRL's has no delta (delta = 0); BCO (Jung et al., 2024) shifts the rewards by delta, a running mean of them.
  With beta = 1 and delta = 0 this is the paper's Eq. 2 (cldg.training.losses.contrastive_loss, variant eq2,
  on D = log p_target - log p_ref, whose beta multiplies D as this beta does).
- `kto_loss`: 1 - sig(beta (pc - rc - z0)) for the desirable, 1 - sig(beta (z0 - (pr - rr))) for the
  undesirable, z0 = max(0, mean of the log-ratios of mismatched pairs), held constant (no gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# -- token level --------------------------------------------------------------------------------------------


def earlier_candidates(targets: torch.Tensor, mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """[B, T, T] bool, True at (b, t, j) when targets[b, j] is a candidate of step t: j a real position with
    t - window <= j < t (any j < t when window is None), targets[b, j] != targets[b, t], and j the last such
    position holding its id (each distinct id counted once). Indices, not one-hots: no [B, T, V] tensor."""
    T = targets.size(1)
    pos = torch.arange(T, device=targets.device)
    same = targets.unsqueeze(2) == targets.unsqueeze(1)                        # [B, j, k]
    later = same & mask.unsqueeze(1) & (pos.view(1, 1, T) > pos.view(1, T, 1))  # k > j real with the same id
    next_same = torch.where(later, pos.view(1, 1, T), pos.new_tensor(T)).amin(-1)  # [B, j]
    step, j = pos.view(1, T, 1), pos.view(1, 1, T)
    cands = (j < step) & (next_same.unsqueeze(1) >= step) & mask.unsqueeze(1)  # last occurrence before t
    if window is not None:
        cands &= j >= step - window
    return cands & ~same                                                       # same[b, t, j]: y_j == y_t


def _candidate_lprobs(lprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, T, T]: lprobs[b, t, targets[b, j]]."""
    return lprobs.gather(-1, targets.unsqueeze(1).expand(-1, targets.size(1), -1))


def _per_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def log_one_minus_exp(lp: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """log(1 - p) for p = exp(lp), with 1 - p floored at `floor` (Welleck et al.'s clamp)."""
    return torch.log((-torch.expm1(lp.clamp(max=0.0))).clamp_min(floor))


def unlikelihood_token_loss(lprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level unlikelihood: mean over real tokens of -sum_{c in C_t} log(1 - p(c | y_<t))."""
    mask = mask.bool()
    lprobs = lprobs.float()
    cands = earlier_candidates(targets, mask)
    cand_lp = _candidate_lprobs(lprobs, targets)
    per_token = -torch.where(cands, log_one_minus_exp(cand_lp), torch.zeros_like(cand_lp)).sum(-1)
    return _per_token_mean(per_token, mask)


def repeated_ngram_mask(tokens: torch.Tensor, mask: torch.Tensor, n: int = 4) -> torch.Tensor:
    """[B, T] bool: the tokens of every n-gram that already occurred earlier in the same row (its n tokens)."""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    for b, (row, m) in enumerate(zip(tokens.tolist(), mask.bool().tolist())):
        length = sum(m)
        seen: set[tuple[int, ...]] = set()
        for i in range(length - n + 1):
            gram = tuple(row[i:i + n])
            if gram in seen:
                out[b, i:i + n] = True
            seen.add(gram)
    return out


def unlikelihood_sequence_loss(token_logps: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                               n: int = 4) -> torch.Tensor:
    """Sequence-level unlikelihood on a decoded continuation: token_logps [B, T] = log p(tokens_t | ...) under
    the model; mean over real tokens of -log(1 - p(y_t)) where y_t is inside a repeated n-gram, else 0."""
    mask = mask.bool()
    penalised = repeated_ngram_mask(tokens, mask, n) & mask
    per_token = -torch.where(penalised, log_one_minus_exp(token_logps.float()), torch.zeros_like(token_logps.float()))
    return _per_token_mean(per_token, mask)


def ct_loss(lprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Contrastive token loss: mean over real tokens of log(1 + sum_{v in S_t} exp(z_v - z_{y_t}))."""
    mask = mask.bool()
    lprobs = lprobs.float()
    negs = earlier_candidates(targets, mask, window)
    diff = _candidate_lprobs(lprobs, targets) - lprobs.gather(-1, targets.unsqueeze(-1))  # z_v - z_{y_t}
    diff = diff.masked_fill(~negs, float("-inf"))
    zero = torch.zeros_like(diff[..., :1])
    per_token = torch.logsumexp(torch.cat([zero, diff], -1), -1)               # log(1 + sum exp), stable
    return _per_token_mean(per_token, mask)


def simctg_loss(hidden: torch.Tensor, mask: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """SimCTG's contrastive objective: mean over ordered pairs (i, j), i != j, of real positions of the same
    sequence of max(0, margin - s(h_i, h_i) + s(h_i, h_j)), s = cosine similarity. hidden [B, T, H]."""
    mask = mask.bool()
    h = F.normalize(hidden.float(), dim=-1)
    sim = h @ h.transpose(1, 2)                                                # [B, T, T]
    gold = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)                          # s(h_i, h_i)
    loss = F.relu(margin - (gold - sim))
    pairs = mask.unsqueeze(2) & mask.unsqueeze(1)
    pairs &= ~torch.eye(sim.size(1), dtype=torch.bool, device=sim.device)
    return torch.where(pairs, loss, torch.zeros_like(loss)).sum() / pairs.sum().clamp_min(1)


# -- sequence level (pair = chosen, mined negative = rejected) ----------------------------------------------


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO (Rafailov et al., 2023; TRL "sigmoid"), averaged over pairs."""
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * delta.float()).mean()


def bco_pair_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, beta: float = 0.1, delta: float = 0.0) -> torch.Tensor:
    """BCO on pairs (TRL "bco_pair"; delta = BCO's reward shift, 0 in TRL), averaged over pairs."""
    chosen = beta * (policy_chosen - ref_chosen).float() - delta
    rejected = beta * (policy_rejected - ref_rejected).float() - delta
    return (-F.logsigmoid(chosen) - F.logsigmoid(-rejected)).mean()


def kto_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al., 2024; TRL loss_type "kto"): the reference point z0 is the clamped mean log-ratio of
    mismatched (context, response) pairs, without gradient; the loss is the mean over desirable and undesirable."""
    z0 = (policy_mismatched - ref_mismatched).float().mean().detach().clamp_min(0)
    chosen = 1 - torch.sigmoid(beta * ((policy_chosen - ref_chosen).float() - z0))
    rejected = 1 - torch.sigmoid(beta * (z0 - (policy_rejected - ref_rejected).float()))
    return torch.cat([desirable_weight * chosen, undesirable_weight * rejected]).mean()
