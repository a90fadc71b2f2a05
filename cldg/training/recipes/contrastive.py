"""ContrastiveRecipe: group-wise contrastive learning (Cai et al., 2020), the `contrastive-train` stage's training."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cldg.training import distributed
from cldg.training.groups import Groups, RefreshedReference, TextIndex, contrastive_group_loss, make_group_batch
from cldg.training.losses import released_anneal_weight


@dataclass(frozen=True)
class ContrastiveObjective:
    """Which loss each step applies (cldg.training.losses through contrastive_group_loss)."""

    variant: str = "eq4"          # eq4 | eq3 | eq2 | soft
    mle_weight: float = 0.0       # + this x the NLL of the pairs themselves
    beta: float = 1.0             # temperature on D = log p_target - log p_reference
    mle_warmup_steps: int = 0     # NLL alone for the first steps (a target trained from scratch)
    nll_anneal: bool = False      # the released code's (1 - w) NLL + w contrastive schedule after the warm-up
    anneal_speed: float = 1.0


class ContrastiveRecipe:
    """Batches of groups (all their sequences scored in one pass), the objective's loss on them, and the
    validation criterion contrastive loss + 0.5 NLL on the valid groups (always against the MLE reference)."""

    group_loss = staticmethod(contrastive_group_loss)  # hf: models score their groups in their own tokens

    def __init__(self, train_groups: Groups, valid_groups: Groups, text: TextIndex,
                 ref_logp: dict[tuple[int, int], float], objective: ContrastiveObjective, batch_size: int, seed: int,
                 device: torch.device, refreshed: RefreshedReference | None = None,
                 dist: distributed.DistInfo | None = None):
        self.train_groups, self.valid_groups, self.text, self.ref_logp = train_groups, valid_groups, text, ref_logp
        self.objective, self.batch_size, self.seed, self.device = objective, batch_size, seed, device
        self.refreshed = refreshed  # --refresh-reference-every: reference log-probs computed per batch
        self.dist = dist or distributed.current()
        self.batches_per_epoch = -(-len(train_groups) // batch_size) // self.dist.world_size

    def batches(self, epoch: int, start: int):
        order = list(range(len(self.train_groups)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.dist.enabled:  # each rank its share; the last chunks that not every rank would get are dropped
            chunks = chunks[self.dist.rank:len(chunks) - len(chunks) % self.dist.world_size:self.dist.world_size]
        for rows in chunks[start:]:
            yield make_group_batch(self.train_groups, rows, self.text, self.ref_logp)

    def loss(self, model, batch, step: int):
        o = self.objective
        if self.refreshed is not None:
            self.refreshed.sync(distributed.unwrap(model), step)
            batch = self.refreshed.rescore(batch)
        if step < o.mle_warmup_steps:
            return self.group_loss(model, batch, o.variant, o.mle_weight, mle_only=True, beta=o.beta)
        anneal = released_anneal_weight(step - o.mle_warmup_steps, o.anneal_speed) if o.nll_anneal else None
        return self.group_loss(model, batch, o.variant, o.mle_weight, beta=o.beta, anneal=anneal)

    def validate(self, model) -> dict[str, float]:
        o = self.objective
        totals = {"contrastive": 0.0, "nll": 0.0, "d_pos": 0.0, "d_neg": 0.0}
        n = 0
        for i in range(0, len(self.valid_groups), self.batch_size):
            rows = list(range(i, min(i + self.batch_size, len(self.valid_groups))))
            batch = make_group_batch(self.valid_groups, rows, self.text, self.ref_logp).to(self.device)
            _, info = self.group_loss(model, batch, o.variant, o.mle_weight, beta=o.beta)
            for key in totals:
                totals[key] += info[key] * len(rows)
            n += len(rows)
        out = {key: v / max(n, 1) for key, v in totals.items()}
        out["criterion"] = out["contrastive"] + 0.5 * out["nll"]
        return out
