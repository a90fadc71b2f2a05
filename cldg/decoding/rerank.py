"""MMI-bidi reranking (Li et al., 2016a, section 4.3): the forward model's N-best beam list, reranked by

    score(r) = log p(r|c) + lambda * log p(c|r) + gamma * |r|

with log p(r|c) the forward model's and log p(c|r) the backward model's (trained on swapped pairs: the response as
the context, the context's last turn as the target), both summed over the tokens with EOS, and |r| the response's
length in tokens. A reranking model (cldg.models.mmi) has `forward_model`, `nbest`, `lam`, `gamma` and
`rerank_scores(batch, index, candidates) -> (log p(r|c), log p(c|r))`; `search.generate` hands it to
`generate_reranked`, whatever the decoding method: the N-best list is always a beam of size `nbest`, with the
decoding options' length limits and n-gram blocking.

MMI-antiLM (section 4.5.1) reranks the same list by

    score(r) = log p(r|c) - lambda * log U_gamma(r),   log U_gamma(r) = sum over k <= gamma of log p_LM(r_k | r_<k)

with p_LM an unconditional language model of responses and gamma the paper's g(k) threshold: only the first gamma
tokens are penalised (the generic, high-frequency openings), the rest of the response is left to p(r|c). Its model
(cldg.models.mmi.MMIAntiLM) has `objective = "antilm"`, `lam`, `threshold`, and `rerank_scores` returns
(log p(r|c), log U_gamma(r)).
"""
from __future__ import annotations

import dataclasses

import torch

from cldg.data.batching import DialogueBatch, _pad
from cldg.text.tokenizer import BOS, EOS, PAD
from cldg.training.losses import sequence_logprob


def mmi_scores(forward_logp: torch.Tensor, backward_logp: torch.Tensor, lengths: torch.Tensor, lam: float,
               gamma: float) -> torch.Tensor:
    """log p(r|c) + lam * log p(c|r) + gamma * |r|, elementwise."""
    return forward_logp + lam * backward_logp + gamma * lengths


def antilm_scores(forward_logp: torch.Tensor, lm_prefix_logp: torch.Tensor, lam: float) -> torch.Tensor:
    """log p(r|c) - lam * log U_gamma(r), elementwise (log U_gamma: the LM's log-prob of the first gamma tokens)."""
    return forward_logp - lam * lm_prefix_logp


def prefix_logprobs(token_logp: torch.Tensor, thresholds: list[int]) -> torch.Tensor:
    """[N, T] per-token log-probs (0 past the end) -> [N, len(thresholds)]: the sum over each row's first gamma
    tokens, for every gamma (0 = nothing penalised)."""
    cumulative = torch.cat([torch.zeros_like(token_logp[:, :1]), token_logp.cumsum(-1)], -1)
    return cumulative[:, [min(g, token_logp.size(1)) for g in thresholds]]


def pick_best(candidates: list[list[list[int]]], scores: list[torch.Tensor]) -> list[list[int]]:
    """Each item's highest-scoring candidate (the first of equal ones); an item without candidates gets []."""
    return [cands[int(torch.argmax(s))] if cands else [] for cands, s in zip(candidates, scores)]


def nbest_lists(model, batch, cfg) -> list[list[list[int]]]:
    """The forward model's N-best list of each context (token ids, EOS stripped), N = the model's nbest."""
    from cldg.decoding.search import beam_nbest

    beam = dataclasses.replace(cfg, method="beam", beam_size=model.nbest)
    return [[toks for _, toks in pool] for pool in beam_nbest(model.forward_model, batch, beam)]


def responses_batch(batch: DialogueBatch, index: torch.Tensor, responses: list[list[int]],
                    max_response_len: int) -> DialogueBatch:
    """The contexts of `batch` rows `index` with `responses` as their targets (cut as training cut them)."""
    cut = [r[:max_response_len - 1] for r in responses]
    device = batch.context.device
    return DialogueBatch(batch.context.index_select(0, index), batch.context_turns.index_select(0, index),
                         _pad([[BOS] + r for r in cut]).to(device), _pad([r + [EOS] for r in cut]).to(device))


def swapped_batch(batch: DialogueBatch, index: torch.Tensor, responses: list[list[int]], max_turn_len: int,
                  max_response_len: int) -> DialogueBatch:
    """The backward model's batch: each response as a one-turn context, the last turn of its context the target."""
    turns = [r[:max_turn_len] for r in responses]
    last = batch.context_turns[:, -1, :].index_select(0, index)
    targets = [[t for t in row if t != PAD][:max_response_len - 1] for row in last.tolist()]
    device = batch.context.device
    flat = _pad(turns)
    return DialogueBatch(flat.to(device), flat.unsqueeze(1).to(device), _pad([[BOS] + t for t in targets]).to(device),
                         _pad([t + [EOS] for t in targets]).to(device))


def lm_batch(responses: list[list[int]], max_response_len: int, device) -> DialogueBatch:
    """The language model's batch: `responses` as targets of an empty context (how it was trained)."""
    cut = [r[:max_response_len - 1] for r in responses]
    empty = _pad([[] for _ in cut])
    return DialogueBatch(empty.to(device), empty.unsqueeze(1).to(device), _pad([[BOS] + r for r in cut]).to(device),
                         _pad([r + [EOS] for r in cut]).to(device))


def pair_logprobs(model, batch: DialogueBatch) -> torch.Tensor:
    """log p(response_out | context) of every row, summed over its tokens (EOS included)."""
    return sequence_logprob(model(batch).float(), batch.response_out, PAD)


@torch.inference_mode()
def generate_reranked(model, batch, cfg) -> list[list[int]]:
    candidates = nbest_lists(model, batch, cfg)
    index = torch.tensor([b for b, cands in enumerate(candidates) for _ in cands], dtype=torch.long,
                         device=batch.context.device)
    flat = [c for cands in candidates for c in cands]
    if not flat:
        return [[] for _ in candidates]
    fwd, bwd = model.rerank_scores(batch, index, flat)
    if getattr(model, "objective", "bidi") == "antilm":  # bwd is then log U_gamma(r)
        return pick_best(candidates, list(antilm_scores(fwd, bwd, model.lam).split([len(c) for c in candidates])))
    lengths = torch.tensor([len(c) for c in flat], dtype=fwd.dtype, device=fwd.device)
    scores = mmi_scores(fwd, bwd, lengths, model.lam, model.gamma).split([len(c) for c in candidates])
    return pick_best(candidates, list(scores))


def tune_weights(forward_logp: list[torch.Tensor], backward_logp: list[torch.Tensor], candidates: list[list[list[str]]],
                 references: list[list[str]], lambdas: list[float], gammas: list[float]):
    """(lambda, gamma, grid): the weights whose reranked choices have the highest mean sentence BLEU (mean of
    BLEU-1..4, the Table 2 figures) against the references; the first best in grid order (lambda, then gamma)
    wins a tie. Per context: tensors of its candidates' log p(r|c) and log p(c|r), the candidates as words.
    `grid` lists {lambda, gamma, bleu} for every pair (the artifact's metrics report it)."""
    grid = []
    for lam in lambdas:
        for gamma in gammas:
            chosen = []
            for fwd, bwd, cands in zip(forward_logp, backward_logp, candidates):
                lengths = torch.tensor([len(c) for c in cands], dtype=fwd.dtype)
                chosen.append(pick_best([cands], [mmi_scores(fwd, bwd, lengths, lam, gamma)])[0])
            grid.append({"lambda": lam, "gamma": gamma, "bleu": mean_sentence_bleu(chosen, references)})
    best = max(grid, key=lambda g: g["bleu"])  # max keeps the first of equal values
    return best["lambda"], best["gamma"], grid


def mean_sentence_bleu(chosen: list[list[str]], references: list[list[str]]) -> float:
    """The mean of BLEU-1..4 (each a mean of sentence BLEU, the Table 2 figures): what the grids are tuned on."""
    from cldg.metrics.bleu import bleu_scores

    per_n = bleu_scores(chosen, references)
    return sum(sum(v) / max(len(v), 1) for v in per_n.values()) / len(per_n)


def tune_antilm(forward_logp: list[torch.Tensor], lm_prefix_logp: list[torch.Tensor],
                candidates: list[list[list[str]]], references: list[list[str]], lambdas: list[float],
                thresholds: list[int]):
    """(lambda, gamma, grid) for MMI-antiLM, chosen as `tune_weights` chooses (mean sentence BLEU-1..4, the first
    best in grid order: lambda, then gamma). Per context: its candidates' log p(r|c) [n] and log U_gamma(r)
    [n, len(thresholds)] (column j for thresholds[j], `prefix_logprobs`), the candidates as words. `grid` lists
    {lambda, gamma, bleu} for every pair."""
    grid = []
    for lam in lambdas:
        for j, gamma in enumerate(thresholds):
            chosen = [pick_best([cands], [antilm_scores(fwd, lm[:, j], lam)])[0]
                      for fwd, lm, cands in zip(forward_logp, lm_prefix_logp, candidates)]
            grid.append({"lambda": lam, "gamma": gamma, "bleu": mean_sentence_bleu(chosen, references)})
    best = max(grid, key=lambda g: g["bleu"])  # max keeps the first of equal values
    return best["lambda"], best["gamma"], grid
