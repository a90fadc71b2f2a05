"""What the objectives of issue 16 share: (context, response) pairs scored by a cldg model or an `hf:` model, the
MLE fine-tuning recipe they extend, and (pair, mined negative) batches with the reference's log-probs.

A `Scorer` hides the difference between the two kinds of model: `batch(contexts, responses)` tokenizes (the prepare
tokenizer and the reference's limits for cldg models, the model's own tokenizer for `hf:` ones) and
`output(model, batch, hidden)` gives a `ResponseOutput` (logits, targets, mask and, for SimCTG, the last layer's
states at the response positions). The recipes apply the functions of cldg/training/objectives.py to it.

- `PairsRecipe`: MLE on pairs (pretrain of an `hf:` model; the base of unlikelihood, CT and SimCTG, which define
  `term`, added to the NLL with `term_weight`). Validation: the mean token NLL of the valid pairs; with a term, the
  criterion is the objective NLL + weight x term on them (the NLL logged beside it).
- `PreferenceRecipe`: batches of (pair, mined negative[, mismatched pair]) with the frozen reference's log p(r|c),
  computed once in `setup` (the MLE reference is the model before training starts; no second copy is kept).
  DPO, BCO and KTO define `objective`. Validation: the objective on the valid triples.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from cldg.models.hf import ResponseOutput
from cldg.training import distributed


# -- scoring pairs with either kind of model ----------------------------------------------------------------------


class NativeScorer:
    """cldg's own models (seq2seq, HRED, HRAN, transformer): the prepare tokenizer, the reference's limits."""

    def __init__(self, tokenizer, limits):
        self.tokenizer, self.limits = tokenizer, limits

    def batch(self, contexts: list[list[str]], responses: list[str]):
        from cldg.data.batching import collate

        return collate(self.tokenizer, contexts, responses, self.limits)

    def output(self, model, batch, hidden: bool = False) -> ResponseOutput:
        from cldg.text.tokenizer import PAD

        states: list[torch.Tensor] = []
        hooks = self.state_hooks(distributed.unwrap(model), states) if hidden else []
        try:
            logits = model(batch)
        finally:
            for hook in hooks:
                hook.remove()
        targets = batch.response_out
        return ResponseOutput(logits, targets, targets.ne(PAD), states[-1] if states else None)

    @staticmethod
    def state_hooks(model, states: list[torch.Tensor]) -> list:
        """Hooks that put the last layer's states into `states`: the input of the output layer `out` (every cldg
        model ends in it), or, when that input is a dropout's output (seq2seq, HRED, HRAN), the dropout's input,
        so that SimCTG's margin never sees the zeros of dropout in training. Outputs and weights are unchanged."""
        last: list[tuple[torch.Tensor, torch.Tensor]] = []  # (output, input) of the latest dropout call

        def on_dropout(module, args, out):
            last[:] = [(out, args[0])]

        def on_out(module, args, out):
            x = args[0]
            states.append(last[0][1] if last and last[0][0] is x else x)

        drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        return [m.register_forward_hook(on_dropout) for m in drops] + [model.out.register_forward_hook(on_out)]

    @torch.no_grad()
    def generate(self, model, contexts: list[list[str]], max_len: int) -> list[str]:
        """Greedy responses (for sequence-level unlikelihood)."""
        from cldg.data.batching import collate
        from cldg.decoding.search import DecodeConfig, generate

        model = distributed.unwrap(model).eval()  # no dropout while it answers; the caller turns training back on
        device = next(model.parameters()).device
        batch = collate(self.tokenizer, contexts, None, self.limits).to(device)
        ids = generate(model, batch, DecodeConfig(method="greedy", max_len=max_len))
        return [self.tokenizer.decode(row) for row in ids]

    def generated_batch(self, model, contexts: list[list[str]], max_len: int):
        """The batch of the contexts and their greedy responses (decoded to text and tokenized again)."""
        return self.batch(contexts, self.generate(model, contexts, max_len))


class HFScorer:
    """`hf:` models (cldg/models/hf.py): the model's own tokenizer and limits."""

    def __init__(self, model):
        self.model = model  # for its tokenizer; `output` runs whichever model the trainer hands it

    def batch(self, contexts: list[list[str]], responses: list[str]):
        return self.model.make_batch(contexts, responses)

    def output(self, model, batch, hidden: bool = False) -> ResponseOutput:
        return distributed.unwrap(model).response_output(batch, hidden)

    @torch.no_grad()
    def generate(self, model, contexts: list[list[str]], max_len: int) -> list[str]:
        from cldg.decoding.search import DecodeConfig

        return distributed.unwrap(model).generate(contexts, DecodeConfig(method="greedy", max_len=max_len))

    @torch.no_grad()
    def generated_batch(self, model, contexts: list[list[str]], max_len: int):
        """The batch of the contexts and the greedy responses' own token ids: the tokens the model emitted, its stop
        id only where it generated one (none added where max_len ended the response); no text round trip."""
        from cldg.decoding.search import DecodeConfig

        model = distributed.unwrap(model)
        ids = model.generate_ids(contexts, DecodeConfig(method="greedy", max_len=max_len), keep_stop=True)
        return model.batch_from_ids(contexts, ids)


def disable_dropout(model) -> None:
    """Dropout off in `model` in training mode too (TRL's disable_dropout_in_model, and more): every nn.Dropout's
    p and every float `*dropout*` attribute (nn.GRU/LSTM's between layers, nn.MultiheadAttention's, the float
    rates transformers' BART-like layers apply through F.dropout) set to 0. Weights are untouched."""
    for module in distributed.unwrap(model).modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def token_nll(out: ResponseOutput) -> tuple[torch.Tensor, int]:
    """(mean NLL per real response token, number of real tokens)."""
    n = int(out.mask.sum())
    return -out.token_logprobs().sum() / max(n, 1), n


@torch.no_grad()
def sequence_logprobs(scorer, model, contexts: list[list[str]], responses: list[str], batch_size: int,
                      device) -> torch.Tensor:
    """log p(r|c) [N] of each pair, in eval mode (float32, on the CPU)."""
    model.eval()
    out = []
    for i in range(0, len(contexts), batch_size):
        batch = scorer.batch(contexts[i:i + batch_size], responses[i:i + batch_size]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            out.append(scorer.output(model, batch).token_logprobs().sum(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# -- the reference and the pairs ------------------------------------------------------------------------------------


def load_reference(inputs, cfg, device):
    """(the MLE reference to fine-tune, its scorer, its limits): a cldg model or an `hf:` one, with LoRA adapters
    when --lora-r is set (hf: only)."""
    from cldg.data.batching import Limits
    from cldg.errors import CldgError
    from cldg.models import load_model
    from cldg.models.hf import HFDialogueModel, LoraOptions
    from cldg.text.tokenizer import DialogueTokenizer

    rc = inputs.configs["reference"]
    limits = Limits.from_config(rc)
    model = load_model(inputs.dirs["reference"], device)
    if isinstance(model, HFDialogueModel):
        if getattr(cfg, "lora_r", 0):
            model.add_adapters(LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha))
        return model, HFScorer(model), limits
    if getattr(cfg, "lora_r", 0):
        raise CldgError(f"--lora-r {cfg.lora_r}: LoRA is for hf: models; the reference is a {model.name}")
    return model, NativeScorer(DialogueTokenizer.load(inputs.prepare / "tokenizer.json"), limits), limits


def read_pairs_split(prepare_dir, split: str, max_pairs: int, seed: int, max_context_turns: int):
    """(contexts, responses) of a split (a seeded subset of at most max_pairs; 0 = all), contexts cut to the
    reference's turns."""
    from cldg.training.recipes.mmi import read_split

    contexts, responses = read_split(prepare_dir, split, max_pairs, seed)
    return [c[-max_context_turns:] for c in contexts], responses


# -- MLE on pairs, the token-level objectives' base ------------------------------------------------------------------


@dataclass
class PairBatch:
    """The model batch of some pairs and their contexts as text (sequence-level unlikelihood decodes from them)."""

    inputs: Any
    contexts: list[list[str]]

    def to(self, device) -> PairBatch:
        return PairBatch(self.inputs.to(device), self.contexts)


class PairsRecipe:
    """MLE on (context, response) pairs through a scorer, in a seeded order per epoch."""

    progress_keys: tuple[str, ...] = ()

    def __init__(self, scorer, train: tuple[list, list], valid: tuple[list, list], batch_size: int, seed: int,
                 device, cfg=None):
        self.scorer, self.train, self.valid, self.cfg = scorer, train, valid, cfg  # cfg: the approach's options
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.batches_per_epoch = -(-len(train[0]) // batch_size)

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        model, scorer, limits = load_reference(inputs, cfg, device)
        train = read_pairs_split(inputs.prepare, "train", cfg.max_train_pairs, seed, limits.max_context_turns)
        valid = read_pairs_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed, limits.max_context_turns)
        return model.train(), cls(scorer, train, valid, cfg.batch_size, seed, device, cfg)

    def describe(self) -> str:
        return f"{type(self).__name__} on {len(self.train[0]):,} train / {len(self.valid[0]):,} valid pairs"

    def batches(self, epoch: int, start: int):
        order = list(range(len(self.train[0])))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        contexts, responses = self.train
        for i in range(start * self.batch_size, len(order), self.batch_size):
            rows = order[i:i + self.batch_size]
            batch_contexts = [contexts[r] for r in rows]
            yield PairBatch(self.scorer.batch(batch_contexts, [responses[r] for r in rows]), batch_contexts)

    # A subclass that sets term_name (UL, CT, SimCTG) defines term(out: ResponseOutput) -> the unweighted term its
    # objective adds to the NLL on one batch's output; None: MLE alone (term is never called)
    term_name: str | None = None
    term_hidden = False           # whether the term needs the last layer's states

    def term_weight(self) -> float:
        return 1.0

    def loss(self, model, batch: PairBatch, step: int):
        out = self.scorer.output(model, batch.inputs, hidden=self.term_hidden)
        nll, n = token_nll(out)
        if self.term_name is None:
            return nll, {"tokens": n, "nll": nll.item()}
        term = self.term(out)
        return nll + self.term_weight() * term, {"tokens": n, "nll": nll.item(), self.term_name: term.item()}

    def validate(self, model) -> dict[str, float]:
        """The mean token NLL of the valid pairs and, for UL, CT and SimCTG, their term (each batch's weighted by its
        tokens); the criterion is the training objective, NLL + weight x term (NLL alone would favour the
        checkpoint closest to the MLE reference)."""
        from cldg.training.evaluation import perplexity

        total, term_total, tokens = 0.0, 0.0, 0
        contexts, responses = self.valid
        for i in range(0, len(contexts), self.batch_size):
            batch = self.scorer.batch(contexts[i:i + self.batch_size], responses[i:i + self.batch_size]).to(self.device)
            out = self.scorer.output(model, batch, hidden=self.term_hidden)
            nll, n = token_nll(out)
            total, tokens = total + nll.item() * n, tokens + n
            if self.term_name is not None:
                term_total += self.term(out).item() * n
        nll = total / max(tokens, 1)
        if self.term_name is None:
            return {"criterion": nll, "nll": nll, "ppl": perplexity(nll)}
        term = term_total / max(tokens, 1)
        return {"criterion": nll + self.term_weight() * term, "nll": nll, "ppl": perplexity(nll), self.term_name: term}

    def finish(self, model, summary: dict):
        key = "best_valid_nll" if self.term_name is None else "best_valid_objective"
        return distributed.unwrap(model), {key: summary["best_criterion"]}


# -- (pair, mined negative) with the reference's log-probs ----------------------------------------------------------


@dataclass
class PreferenceBatch:
    """B pairs (chosen), their mined negatives (rejected) and, for KTO, B mismatched pairs, as one model batch of
    2B (or 3B) sequences in that order; `ref` [2B or 3B] is the frozen reference's log p(r|c) of each."""

    inputs: Any
    size: int
    ref: torch.Tensor

    def to(self, device) -> PreferenceBatch:
        return PreferenceBatch(self.inputs.to(device), self.size, self.ref.to(device))

    def split(self, logps: torch.Tensor) -> list[torch.Tensor]:
        """[2B or 3B] -> chosen, rejected (, mismatched), each [B]."""
        return list(logps.split(self.size))

    @property
    def ref_chosen(self) -> torch.Tensor:
        return self.ref[:self.size]

    @property
    def ref_rejected(self) -> torch.Tensor:
        return self.ref[self.size:2 * self.size]

    @property
    def ref_mismatched(self) -> torch.Tensor:
        return self.ref[2 * self.size:]


@dataclass
class Triples:
    """Per training example: the pair (context, response), its mined negative (context, negative response) and a
    mismatched pair (context, another pair's response); `ref` [N, 3] their reference log-probs."""

    contexts: list[list[str]]
    chosen: list[str]
    rejected: list[str]
    mismatched: list[str]
    ref: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.contexts)


def mined_triples(prepare_dir, samples_dir, split: str, max_pairs: int, seed: int, max_context_turns: int) -> Triples:
    """The pairs of `split` that have a response-side negative (the worst matched, rank 0: same context, so a DPO
    pair) whose text is not the pair's own response (a duplicate response elsewhere in the data), each with the
    response of a seeded random other pair as its mismatched response."""
    from pathlib import Path

    from cldg.data.pairs import read_pairs
    from cldg.errors import CldgError
    from cldg.retrieval.mining import read_samples
    from cldg.training.groups import GroupOptions, build_groups

    contexts, responses = {}, {}
    for name in ("train", "valid"):
        t = read_pairs(Path(prepare_dir) / f"pairs-{name}.parquet")
        contexts.update(zip(t.pair_id, t.context))
        responses.update(zip(t.pair_id, t.response))
    groups = build_groups(read_samples(Path(samples_dir)), split, GroupOptions(k=1, response_side_only=True))
    rows = [g for g in range(len(groups)) if groups.neg_resp[g, 0] >= 0
            and responses[int(groups.neg_resp[g, 0])] != responses[int(groups.pair_ids[g])]]  # not its own text
    if not rows:
        raise CldgError(f"{samples_dir}: no {split} pair has a mined response-side negative (other than its own "
                        f"response's text)")
    rng = random.Random(seed)
    if max_pairs and len(rows) > max_pairs:
        rows = sorted(rng.sample(rows, max_pairs))
    pids = [int(groups.pair_ids[g]) for g in rows]
    cycle = list(range(len(pids)))
    rng.shuffle(cycle)  # each pair takes the response of the next one on a random cycle: never its own
    other = {cycle[i]: pids[cycle[(i + 1) % len(cycle)]] for i in range(len(cycle))}
    return Triples([list(contexts[p])[-max_context_turns:] for p in pids], [responses[p] for p in pids],
                   [responses[int(groups.neg_resp[g, 0])] for g in rows], [responses[other[i]] for i in range(len(pids))])


class PreferenceRecipe:
    """Batches of (pair, mined negative, mismatched pair) with the reference's log-probs; `objective(logps, batch)`
    (the subclass) turns the target's log-probs into the loss."""

    progress_keys: tuple[str, ...] = ("margin", "accuracy")
    uses_mismatched = False  # KTO's reference point needs the mismatched pairs

    def __init__(self, scorer, train: Triples, valid: Triples, batch_size: int, seed: int, device, cfg):
        self.scorer, self.train, self.valid, self.cfg = scorer, train, valid, cfg
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.batches_per_epoch = -(-len(train) // batch_size)

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        model, scorer, limits = load_reference(inputs, cfg, device)
        split = (lambda name, n: mined_triples(inputs.prepare, inputs.dirs["samples"], name, n, seed,
                                               limits.max_context_turns))
        recipe = cls(scorer, split("train", cfg.max_train_pairs), split("valid", cfg.max_valid_pairs),
                     cfg.batch_size, seed, device, cfg)
        for name, triples in (("train", recipe.train), ("valid", recipe.valid)):
            if cls.uses_mismatched and len(triples) < 2:
                from cldg.errors import CldgError

                raise CldgError(f"{cls.__name__.removesuffix('Recipe')}: {len(triples)} {name} pair with a mined "
                                f"negative; its mismatched pairs (another pair's response) need at least 2")
        for triples in (recipe.train, recipe.valid):  # the MLE reference's log-probs, before any step changes it
            triples.ref = torch.stack([sequence_logprobs(scorer, model, triples.contexts, responses, 64, device)
                                       for responses in (triples.chosen, triples.rejected, triples.mismatched)], 1)
        if getattr(cfg, "disable_dropout", False):  # the policy as the reference was scored: eval mode's forward
            disable_dropout(model)
        return model.train(), recipe

    def describe(self) -> str:
        return (f"{type(self).__name__} on {len(self.train):,} train / {len(self.valid):,} valid (pair, mined "
                f"negative) with the MLE reference's log-probs, beta {self.cfg.beta}")

    def make_batch(self, triples: Triples, rows: list[int]) -> PreferenceBatch:
        kinds = (triples.chosen, triples.rejected) + ((triples.mismatched,) if self.uses_mismatched else ())
        contexts = [triples.contexts[r] for r in rows] * len(kinds)
        responses = [kind[r] for kind in kinds for r in rows]
        ref = triples.ref[rows][:, :len(kinds)].T.reshape(-1)
        return PreferenceBatch(self.scorer.batch(contexts, responses), len(rows), ref)

    def batches(self, epoch: int, start: int):
        order = list(range(len(self.train)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        for i in range(start * self.batch_size, len(order), self.batch_size):
            yield self.make_batch(self.train, order[i:i + self.batch_size])

    def policy_logprobs(self, model, batch: PreferenceBatch) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        """(the target's log p(r|c) split as the batch is, the chosen ones' token NLL, real tokens)."""
        out = self.scorer.output(model, batch.inputs)
        token_logps = out.token_logprobs()
        chosen_tokens = out.mask[:batch.size].sum()
        nll = -token_logps[:batch.size].sum() / chosen_tokens.clamp_min(1)
        return batch.split(token_logps.sum(-1)), nll, int(out.mask.sum())

    def loss(self, model, batch: PreferenceBatch, step: int):
        logps, nll, tokens = self.policy_logprobs(model, batch)
        loss = self.objective(logps, batch)
        return loss, {"tokens": tokens, "nll": nll.item(), **self.rewards(logps, batch)}

    def rewards(self, logps: list[torch.Tensor], batch: PreferenceBatch) -> dict[str, float]:
        """TRL's logged figures: the mean margin beta (D_chosen - D_rejected) and how often it is positive."""
        margin = self.cfg.beta * ((logps[0] - batch.ref_chosen) - (logps[1] - batch.ref_rejected)).detach()
        return {"margin": margin.mean().item(), "accuracy": (margin > 0).float().mean().item()}

    def validate(self, model) -> dict[str, float]:
        totals = {"objective": 0.0, "nll": 0.0, "margin": 0.0, "accuracy": 0.0}
        for i in range(0, len(self.valid), self.batch_size):
            batch = self.make_batch(self.valid, list(range(i, min(i + self.batch_size, len(self.valid)))))
            batch = batch.to(self.device)
            logps, nll, _ = self.policy_logprobs(model, batch)
            figures = {"objective": self.objective(logps, batch).item(), "nll": nll.item(),
                       **self.rewards(logps, batch)}
            for key in totals:
                totals[key] += figures[key] * batch.size
        out = {key: value / max(len(self.valid), 1) for key, value in totals.items()}
        return {"criterion": out["objective"], **out}

    def finish(self, model, summary: dict):
        return distributed.unwrap(model), {"beta": self.cfg.beta, "train_triples": len(self.train),
                                           "best_valid_objective": summary["best_criterion"]}
