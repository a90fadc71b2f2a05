"""UnlikelihoodRecipe: Welleck et al. (2020), fine-tuning the MLE reference.

Token level (every step): NLL + alpha x the unlikelihood of the earlier tokens of the same response
(objectives.unlikelihood_token_loss). Sequence level (--sequence-level-rate p: a seeded share p of the steps, Welleck
et al.'s 0.5 mix): the model answers the batch's contexts greedily, and the tokens of its repeated n-grams are made
unlikely (objectives.unlikelihood_sequence_loss): for hf: models the very ids it generated, its stop id only where
it emitted one (cldg models' responses are decoded and tokenized again). The best checkpoint is the one with the
lowest token-level objective, NLL + alpha x unlikelihood, on the valid pairs (PairsRecipe.validate).
"""
from __future__ import annotations

import random

import torch.nn.functional as F

from cldg.models.hf import ResponseOutput
from cldg.training.objectives import unlikelihood_sequence_loss, unlikelihood_token_loss
from cldg.training.recipes.pairs import PairBatch, PairsRecipe


class UnlikelihoodRecipe(PairsRecipe):
    progress_keys = ("ul",)
    term_name = "ul"

    def term(self, out: ResponseOutput):
        return unlikelihood_token_loss(F.log_softmax(out.logits.float(), -1), out.targets, out.mask)

    def term_weight(self) -> float:
        return self.cfg.alpha

    def loss(self, model, batch: PairBatch, step: int):
        if self.sequence_level_step(step):
            return self.sequence_level_loss(model, batch)
        return super().loss(model, batch, step)

    def sequence_level_step(self, step: int) -> bool:
        """Whether step `step` applies the sequence-level loss (a function of (seed, step): a resume repeats it)."""
        return random.Random(self.seed * 1_000_003 + step).random() < self.cfg.sequence_level_rate

    def sequence_level_loss(self, model, batch: PairBatch):
        """The model's own greedy responses to the batch's contexts, the tokens of their repeated n-grams unlikely."""
        generated = self.scorer.generated_batch(model, batch.contexts, self.cfg.max_decode_len)
        model.train()  # generating switched it to eval mode
        out = self.scorer.output(model, generated.to(self.device))
        ul = unlikelihood_sequence_loss(out.token_logprobs(), out.targets, out.mask, self.cfg.ngram)
        return ul, {"tokens": int(out.mask.sum()), "ul": ul.item()}

    def describe(self) -> str:
        level = (f", sequence level on {self.cfg.sequence_level_rate:.0%} of the steps ({self.cfg.ngram}-grams)"
                 if self.cfg.sequence_level_rate else "")
        return f"unlikelihood (alpha {self.cfg.alpha}){level}; " + super().describe()

    def finish(self, model, summary: dict):
        model, metrics = super().finish(model, summary)
        return model, {**metrics, "alpha": self.cfg.alpha, "sequence_level_rate": self.cfg.sequence_level_rate}
