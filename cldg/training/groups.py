"""Contrastive groups: for each pair (c, r), its positives and negatives as fixed-size slots.

Positives (P = 2k + 1 slots): the pair itself (slot 0, s+ = 1), then the k response-side r+ as (c, r+)
and the k context-side c+ as (c+, r). Negatives (N = 2k slots): the k (c, r-) then the k (c-, r).
Within a side, slots follow the mined rank (positives best first, negatives worst first).
A sequence is named by (context pair id, response pair id). Ablation flags decide which samples fill
the slots; empty slots are masked. `GroupBatch` flattens every real sequence of a batch of groups into
one `DialogueBatch`, so the model scores all of them in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from cldg.data.batching import DialogueBatch, Limits, collate_ids, encode_context
from cldg.errors import CldgError


@dataclass
class GroupOptions:
    k: int = 3
    no_positive_group: bool = False   # positives = the pair itself only        (Table 5 b)
    no_negative_group: bool = False   # one negative (the worst response-side)  (Table 5 c)
    no_group: bool = False            # one positive and one negative           (Table 5 a)
    response_side_only: bool = False  # no context-side samples                 (Table 5 e)
    context_side_only: bool = False   # no response-side samples                (Table 5 d)
    no_matching_scores: bool = False  # s+ = 1 and s- = -1: Eq. 4 becomes Eq. 3  (Table 5 f)

    def __post_init__(self):
        if self.k < 1:
            raise CldgError(f"--k {self.k}: the group size must be at least 1")
        if self.response_side_only and self.context_side_only:
            raise CldgError("--response-side-only and --context-side-only exclude each other")


@dataclass
class Groups:
    """Slots of every group of one split. Ids are pair ids; -1 marks an empty slot."""

    pair_ids: np.ndarray                      # [G]
    pos_ctx: np.ndarray                       # [G, P]
    pos_resp: np.ndarray
    pos_w: np.ndarray                         # s+ (float32)
    neg_ctx: np.ndarray                       # [G, N]
    neg_resp: np.ndarray
    neg_w: np.ndarray                         # s- (float32)

    def __len__(self) -> int:
        return len(self.pair_ids)

    def first(self, n: int) -> "Groups":
        """The first n groups."""
        return Groups(*(getattr(self, f.name)[:n] for f in fields(self)))

    def sequences(self) -> set[tuple[int, int]]:
        """Every (context id, response id) that some slot uses."""
        out = set()
        for c, r in ((self.pos_ctx, self.pos_resp), (self.neg_ctx, self.neg_resp)):
            m = c >= 0
            out.update(zip(c[m].tolist(), r[m].tolist()))
        return out


def build_groups(samples: dict[str, list], split: str, opts: GroupOptions) -> Groups:
    """Groups of `split` from the long-format samples table (docs/internals.md)."""
    k = opts.k
    P, N = 1 + 2 * k, 2 * k
    rows: dict[int, list[int]] = {}
    for i, s in enumerate(samples["split"]):
        if s == split:
            rows.setdefault(samples["pair_id"][i], []).append(i)
    ids = np.array(sorted(rows), dtype=np.int64)
    G = len(ids)
    pos_ctx = np.full((G, P), -1, np.int64)
    pos_resp = np.full((G, P), -1, np.int64)
    pos_w = np.zeros((G, P), np.float32)
    neg_ctx = np.full((G, N), -1, np.int64)
    neg_resp = np.full((G, N), -1, np.int64)
    neg_w = np.zeros((G, N), np.float32)
    use_resp = not opts.context_side_only
    use_ctx = not opts.response_side_only
    for g, pid in enumerate(ids.tolist()):
        pos_ctx[g, 0], pos_resp[g, 0], pos_w[g, 0] = pid, pid, 1.0
        for i in rows[pid]:
            side, pol, rank = samples["side"][i], samples["polarity"][i], int(samples["rank"][i])
            cand, w = int(samples["cand_pair_id"][i]), float(samples["weight"][i])
            if side not in ("response", "context") or pol not in ("pos", "neg"):
                raise CldgError(f"samples row {i} (pair {pid}): side {side!r} / polarity {pol!r} is not "
                                f"response|context / pos|neg - rerun `cldg mine-samples`")
            if rank >= k or (side == "response" and not use_resp) or (side == "context" and not use_ctx):
                continue
            ctx, resp = (pid, cand) if side == "response" else (cand, pid)
            if opts.no_matching_scores:
                w = 1.0 if pol == "pos" else -1.0
            if pol == "pos":
                if opts.no_positive_group or opts.no_group:
                    continue
                slot = 1 + rank + (0 if side == "response" else k)
                pos_ctx[g, slot], pos_resp[g, slot], pos_w[g, slot] = ctx, resp, w
            else:
                slot = rank + (0 if side == "response" else k)
                neg_ctx[g, slot], neg_resp[g, slot], neg_w[g, slot] = ctx, resp, w
        if opts.no_negative_group or opts.no_group:
            keep = int(np.argmax(neg_ctx[g] >= 0)) if (neg_ctx[g] >= 0).any() else -1
            for slot in range(N):
                if slot != keep:
                    neg_ctx[g, slot], neg_resp[g, slot], neg_w[g, slot] = -1, -1, 0.0
    return Groups(ids, pos_ctx, pos_resp, pos_w, neg_ctx, neg_resp, neg_w)


@dataclass
class TextIndex:
    """Encoded contexts and responses by pair id (each encoded once)."""

    tokenizer: object
    limits: Limits
    contexts: dict[int, list[str]]
    responses: dict[int, str]
    _ctx: dict[int, tuple] = field(default_factory=dict)
    _resp: dict[int, list[int]] = field(default_factory=dict)

    def context(self, pid: int):
        if pid not in self._ctx:
            self._ctx[pid] = encode_context(self.tokenizer, self.contexts[pid], self.limits)
        return self._ctx[pid]

    def response(self, pid: int) -> list[int]:
        if pid not in self._resp:
            self._resp[pid] = self.tokenizer.encode(self.responses[pid])[: self.limits.max_response_len - 1]
        return self._resp[pid]

    def batch(self, seqs: list[tuple[int, int]]) -> DialogueBatch:
        return collate_ids([self.context(c) for c, _ in seqs], [self.response(r) for _, r in seqs], self.limits)


@dataclass
class GroupBatch:
    """One batch of groups: the flat sequences and where each lands in the [G, P] / [G, N] slots."""

    seqs: DialogueBatch
    pos_index: torch.Tensor   # [G, P] index into the flat sequences (0 where masked)
    neg_index: torch.Tensor   # [G, N]
    pos_mask: torch.Tensor
    neg_mask: torch.Tensor
    s_pos: torch.Tensor
    s_neg: torch.Tensor
    ref_logp: torch.Tensor    # [S] cached reference log p of each flat sequence
    self_index: torch.Tensor  # [G] flat index of each group's own pair (for the MLE term)
    # the pair and its response-side samples share one context: (first [U] a flat row of each distinct context,
    # of [S] each row's distinct context), so a model with `group_forward` encodes 1 + 2k contexts a group, not 4k + 1
    context_first: torch.Tensor
    context_of: torch.Tensor

    def to(self, device) -> "GroupBatch":
        return GroupBatch(self.seqs.to(device), *(getattr(self, f).to(device) for f in
                                                  ("pos_index", "neg_index", "pos_mask", "neg_mask", "s_pos",
                                                   "s_neg", "ref_logp", "self_index", "context_first",
                                                   "context_of")))


def make_group_batch(groups: Groups, rows: list[int], text: TextIndex, ref_logp: dict[tuple[int, int], float] | None
                     ) -> GroupBatch:
    """Flatten the real sequences of groups[rows] (each distinct sequence once)."""
    order: dict[tuple[int, int], int] = {}

    def slots(ctx: np.ndarray, resp: np.ndarray):
        index = np.zeros(ctx.shape, np.int64)
        for (g, j), c in np.ndenumerate(ctx):
            if c >= 0:
                key = (int(c), int(resp[g, j]))
                index[g, j] = order.setdefault(key, len(order))
        return torch.from_numpy(index), torch.from_numpy(ctx >= 0)

    pos_index, pos_mask = slots(groups.pos_ctx[rows], groups.pos_resp[rows])
    neg_index, neg_mask = slots(groups.neg_ctx[rows], groups.neg_resp[rows])
    seqs = list(order)
    ref = torch.tensor([ref_logp[s] for s in seqs] if ref_logp is not None else [0.0] * len(seqs), dtype=torch.float32)
    distinct: dict[int, int] = {}  # context id -> its number among the batch's distinct contexts
    context_of = [distinct.setdefault(c, len(distinct)) for c, _ in seqs]
    context_first = [0] * len(distinct)
    for row in reversed(range(len(seqs))):
        context_first[context_of[row]] = row
    return GroupBatch(text.batch(seqs), pos_index, neg_index, pos_mask, neg_mask,
                      torch.from_numpy(groups.pos_w[rows]), torch.from_numpy(groups.neg_w[rows]), ref,
                      pos_index[:, 0].clone(), torch.tensor(context_first), torch.tensor(context_of))


def contrastive_group_loss(model, gb: GroupBatch, variant: str = "eq4", mle_weight: float = 0.0,
                           mle_only: bool = False, beta: float = 1.0,
                           anneal: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward over every sequence of the batch's groups, D = log p_model - cached log p_reference,
    and the contrastive loss on beta * D (plus `mle_weight` x the NLL of the pairs themselves). `mle_only`
    (the warm-up of a target trained from scratch) returns that NLL alone. `anneal` = w mixes as the
    released code does: (1 - w) * NLL + w * contrastive (mle_weight still adds on top). Returns (loss, what to log)."""
    from cldg.text.tokenizer import PAD
    from cldg.training import distributed
    from cldg.training.losses import picked_logprobs

    targets = gb.seqs.response_out
    at = targets.ne(PAD)  # the real tokens: ~40% of a padded batch's positions
    if getattr(distributed.unwrap(model), "group_forward", False):  # through model(...), so DDP's hooks run
        logits = model(gb.seqs, shared_contexts=(gb.context_first, gb.context_of), at=at)
    else:
        logits = model(gb.seqs)[at]
    token_logp = picked_logprobs(logits, targets[at])                  # [N] log p of each real token
    rows = at.nonzero()[:, 0]                                            # its sequence
    d = torch.zeros_like(gb.ref_logp).index_add(0, rows, token_logp) - gb.ref_logp
    own = torch.bincount(gb.self_index, minlength=len(d)).to(token_logp.dtype)[rows]  # tokens of the pairs
    n_own = own.sum()
    nll = -(token_logp * own).sum() / n_own.clamp_min(1)
    if mle_only:
        return nll, {"tokens": int(n_own), "nll": nll.item()}
    return combine_group_loss(d, nll, gb, len(rows), variant, mle_weight, beta, anneal)


def combine_group_loss(d: torch.Tensor, nll: torch.Tensor, gb: GroupBatch, tokens: int, variant: str,
                       mle_weight: float, beta: float, anneal: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The contrastive loss on beta * D of the batch's groups, mixed with the pairs' NLL as the options say, and
    what to log: shared by cldg models (contrastive_group_loss) and hf: models (recipes.hf_contrastive)."""
    from cldg.training.losses import contrastive_loss

    # beta is a temperature on D (the paper: 1), as DPO's and BCO's beta, so the objectives compare at one scale
    loss = contrastive_loss(beta * d[gb.pos_index], beta * d[gb.neg_index], gb.s_pos, gb.s_neg, gb.pos_mask,
                            gb.neg_mask, variant)
    dd = d.detach()
    info = {"contrastive": loss.item(), "nll": nll.item(), "tokens": tokens,
            "d_pos": float(dd[gb.pos_index][gb.pos_mask].mean()) if gb.pos_mask.any() else 0.0,
            "d_neg": float(dd[gb.neg_index][gb.neg_mask].mean()) if gb.neg_mask.any() else 0.0}
    if anneal is not None:
        loss = (1.0 - anneal) * nll + anneal * loss
        info["anneal_w"] = anneal
    if mle_weight:
        loss = loss + mle_weight * nll
    return loss, info


class RefreshedReference:
    """The released code's option: the reference is replaced by a copy of the target every `every` steps.

    Its log-probabilities then change during training, so they are computed for each batch (no cache).
    Each copy is checkpointed (`reference-<step>.safetensors` in the trainer's `resume/` directory), so a
    run resumed at step s continues against the copy taken at the last multiple of `every` up to s."""

    def __init__(self, reference_model, every: int, resume_dir):
        from pathlib import Path

        self.model, self.every, self.resume_dir = reference_model.eval(), every, Path(resume_dir)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.current = None  # the step whose copy is loaded (0: the MLE reference itself)

    def sync(self, target, step: int) -> None:
        """Before the step after `step` steps: make the reference the copy that step calls for."""
        from cldg.training import checkpoint

        due = step - step % self.every
        if due == self.current:
            return
        if due == 0:
            pass  # the MLE reference the model was loaded as
        elif not checkpoint.load_model_only(self.resume_dir, f"reference-{due}", self.model):
            self.model.load_state_dict(target.state_dict())  # a refresh is due now: take it and keep it
            # every copy is kept until the artifact is committed: a resume may go back past the latest one
            checkpoint.save_model_only(self.resume_dir, f"reference-{due}", self.model)
        self.current = due

    @torch.no_grad()
    def rescore(self, gb: GroupBatch) -> GroupBatch:
        """The batch with the current reference's log p of each of its sequences."""
        import dataclasses

        from cldg.text.tokenizer import PAD
        from cldg.training.losses import sequence_logprob

        logp = sequence_logprob(self.model(gb.seqs), gb.seqs.response_out, PAD).float()
        return dataclasses.replace(gb, ref_logp=logp)
