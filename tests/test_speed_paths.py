"""The fast paths give the same outputs as the reference ones they replaced.

- Decoding: the vectorised greedy / beam / sampling bookkeeping (cldg.decoding.search) against the
  step-by-step reference (cldg.decoding.reference), token for token, over beam sizes, length penalties,
  n-gram blocking, minimum lengths and tiny vocabularies where everything gets banned; for the four
  models, and for the transformer's key/value cache against re-running the decoder over the prefix.
No test here measures a time (bench/ does).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from cldg.data.batching import Limits, collate_ids
from cldg.decoding.reference import generate_reference
from cldg.decoding.search import DecodeConfig, generate
from cldg.models import build_model, model_names
from cldg.text.tokenizer import EOS, SEP

from test_decoding import TableModel, batch_of, random_contexts, random_table

V = 40
TINY = {
    "seq2seq": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.0},
    "hred": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.0},
    "hran": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.0},
    "transformer": {"embedding_dim": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 32, "dropout": 0.0,
                    "max_positions": 64},
}


def model_contexts(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        turns = [torch.randint(5, 12, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
        flat = []
        for i, t in enumerate(turns):
            flat += ([SEP] if i else []) + t
        out.append((flat, turns))
    out.append(([], []))  # an empty context
    return out


def tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, V, **TINY[name]).eval()
    with torch.no_grad():  # sharper distributions than at init, so that argmax ties are meaningless
        model.out.weight.mul_(6)
    return model


CONFIGS = [
    dict(method="greedy"),
    dict(method="greedy", no_repeat_ngram=2, block_context_ngram=2),
    dict(method="beam", beam_size=1),
    dict(method="beam", beam_size=5),
    dict(method="beam", beam_size=4, length_penalty=0.0, min_len=3),
    dict(method="beam", beam_size=3, no_repeat_ngram=2, length_penalty=0.6),
    dict(method="beam", beam_size=5, no_repeat_ngram=3, block_context_ngram=2),
    dict(method="beam", beam_size=6, no_repeat_ngram=1, block_context_ngram=1, min_len=2),
]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_vectorised_decoding_equals_the_step_by_step_reference(name, kw):
    model = tiny_model(name, seed=len(name))
    batch = collate_ids(model_contexts(7, seed=3), None, Limits())
    cfg = DecodeConfig(max_len=12, **kw)
    got = generate(model, batch, cfg)
    if name == "transformer":
        model.use_kv_cache = False  # the reference re-runs the decoder over the whole prefix
    want = generate_reference(model, batch, cfg)
    assert got == want
    assert any(len(h) > 1 for h in got)


@pytest.mark.parametrize("method,kw", [("topk", {"top_k": 5}), ("nucleus", {"top_p": 0.8})])
@pytest.mark.parametrize("per_row", [False, True])
def test_vectorised_sampling_equals_the_reference(method, kw, per_row):
    model = tiny_model("seq2seq", seed=4)
    contexts = model_contexts(6, seed=5)
    batch = collate_ids(contexts, None, Limits())
    cfg = DecodeConfig(method, max_len=10, no_repeat_ngram=2, **kw)
    seeds = list(range(100, 100 + len(contexts))) if per_row else None
    got = generate(model, batch, cfg, torch.Generator().manual_seed(7), row_seeds=seeds)
    want = generate_reference(model, batch, cfg, torch.Generator().manual_seed(7), row_seeds=seeds)
    assert got == want


@pytest.mark.parametrize("seed", range(6))
def test_table_model_every_option_combination(seed):
    """A Markov table model (exact expectations, ties, tiny vocabulary) over a grid of options."""
    model = TableModel(random_table(seed, sharp=1.0 + seed % 3), context_weight=1.0, seed=seed)
    batch = batch_of(random_contexts(9, seed))
    for K, n, m, alpha, min_len in itertools.product([1, 2, 4, 9], [0, 1, 2, 3], [0, 1, 2], [0.0, 1.0], [1, 4]):
        cfg = DecodeConfig("beam", beam_size=K, no_repeat_ngram=n, block_context_ngram=m, length_penalty=alpha,
                           min_len=min_len, max_len=7)
        assert generate(model, batch, cfg) == generate_reference(model, batch, cfg), cfg
    for n, m in itertools.product([0, 1, 2], [0, 1, 2]):
        cfg = DecodeConfig("greedy", no_repeat_ngram=n, block_context_ngram=m, max_len=7)
        assert generate(model, batch, cfg) == generate_reference(model, batch, cfg), cfg


def test_everything_banned_and_ties_match_the_reference():
    """Flat distributions (every continuation ties) and a vocabulary that blocking exhausts."""
    table = torch.zeros(9, 9)
    table[:, EOS] = -5.0
    model = TableModel(table)
    batch = batch_of([[5, 6, 7], [8], [5, 5, 5, 5]])
    for K, n in itertools.product([1, 2, 3, 5], [1, 2]):
        cfg = DecodeConfig("beam", beam_size=K, no_repeat_ngram=n, block_context_ngram=1, max_len=8)
        assert generate(model, batch, cfg) == generate_reference(model, batch, cfg), cfg


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_transformer_cache_gives_the_logits_of_the_full_prefix(positions):
    torch.manual_seed(0)
    model = build_model("transformer", V, **(TINY["transformer"] | {"positions": positions})).eval()
    batch = collate_ids(model_contexts(5, seed=1), None, Limits())
    tokens = torch.randint(5, V, (batch.size, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cached = model.init_decoding(batch)
        model.use_kv_cache = False
        plain = model.init_decoding(batch)
        model.use_kv_cache = True
        for t in range(tokens.size(1)):
            a, cached = model.decode_step(cached, tokens[:, t])
            model.use_kv_cache = False
            b, plain = model.decode_step(plain, tokens[:, t])
            model.use_kv_cache = True
            assert torch.allclose(a, b, atol=1e-5), (t, (a - b).abs().max())
        # reordering the cache (beam search) continues the chosen rows
        index = torch.tensor([4, 4, 0, 2, 1])
        a, _ = model.decode_step(model.reorder_state(cached, index), tokens[index, 0])
        model.use_kv_cache = False
        b, _ = model.decode_step(model.reorder_state(plain, index), tokens[index, 0])
        model.use_kv_cache = True
        assert torch.allclose(a, b, atol=1e-5)
