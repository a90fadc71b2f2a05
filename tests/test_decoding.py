"""Decoding: beam 1 = greedy, beam search is exact when the beam holds every prefix, batched =
one at a time, n-gram blocking, min / max length, seeded top-k and nucleus sampling."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from cldg.data.batching import collate_ids, Limits
from cldg.decoding.search import DecodeConfig, generate
from cldg.models.base import DialogueModel
from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK

V = 9  # ids 0-4 special, 5-8 words


class TableModel(DialogueModel):
    """A first-order Markov model over tokens plus a per-context bias: logits = table[prev] + bias(context).

    Implements the DialogueModel decoding interface (init_decoding / decode_step / reorder_state) and
    is padding-invariant (the bias is a sum over non-pad context tokens), so exact expectations hold.
    """

    def __init__(self, table: torch.Tensor, context_weight: float = 0.0, seed: int = 0):
        super().__init__(table.size(0), None)
        self.table = table.float()
        g = torch.Generator().manual_seed(seed)
        self.context_bias = torch.randn(table.size(0), table.size(0), generator=g) * context_weight

    def forward(self, batch):  # teacher forcing is not needed by the decoder tests
        raise NotImplementedError

    def init_decoding(self, batch):
        mask = (batch.context != PAD).float()
        onehot = torch.nn.functional.one_hot(batch.context, self.vocab_size).float() * mask.unsqueeze(-1)
        return {"bias": onehot.sum(1) @ self.context_bias}

    def decode_step(self, state, prev_tokens):
        return self.table[prev_tokens] + state["bias"], state


def random_table(seed: int, sharp: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, V, generator=g) * sharp


def batch_of(contexts: list[list[int]]):
    return collate_ids([(c, [c]) for c in contexts], None, Limits())


def random_contexts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 7, (1,), generator=g))
        out.append(torch.randint(5, V, (length,), generator=g).tolist())
    return out


def seq_logprob(model: TableModel, context: list[int], tokens: list[int], cfg: DecodeConfig) -> float:
    """The model's log p of tokens (+EOS when shorter than max_len): what beam search ranks by."""
    state = model.init_decoding(batch_of([context]))
    prev, total = BOS, 0.0
    seq = tokens + ([EOS] if len(tokens) < cfg.max_len else [])
    for t in seq:
        logits, _ = model.decode_step(state, torch.tensor([prev]))
        total += float(torch.log_softmax(logits[0], -1)[t])
        prev = t
    return total


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("blocking", [(0, 0), (2, 0), (0, 2)])
def test_beam_size_one_equals_greedy(seed, blocking):
    model = TableModel(random_table(seed), context_weight=1.0, seed=seed)
    contexts = random_contexts(12, seed)
    common = dict(max_len=8, no_repeat_ngram=blocking[0], block_context_ngram=blocking[1])
    greedy = generate(model, batch_of(contexts), DecodeConfig("greedy", **common))
    beam1 = generate(model, batch_of(contexts), DecodeConfig("beam", beam_size=1, **common))
    assert beam1 == greedy


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_is_exact_search(alpha):
    """With room for every prefix (3 words, max_len 3: at most 27 live), beam search must return the
    best-scoring sequence of an exhaustive enumeration, under the GNMT length penalty."""
    table = random_table(7, sharp=1.5)
    table[:, 8] = float("-inf")  # 3 usable words: 5, 6, 7
    model = TableModel(table, context_weight=0.5, seed=3)
    cfg = DecodeConfig("beam", beam_size=40, length_penalty=alpha, max_len=3, min_len=1)
    contexts = random_contexts(5, 11)
    got = generate(model, batch_of(contexts), cfg)
    for ctx, hyp in zip(contexts, got):
        best, best_score = None, -math.inf
        for length in range(1, 4):
            for seq in itertools.product([5, 6, 7], repeat=length):
                lp = seq_logprob(model, ctx, list(seq), cfg)
                n = length + (1 if length < cfg.max_len else 0)
                score = lp / (((5 + n) / 6) ** alpha)
                if score > best_score:
                    best, best_score = list(seq), score
        assert hyp == best


def test_beam_beats_greedy_on_a_garden_path():
    """Greedy takes the likelier first word and is stuck with a flat continuation; beam 2 keeps
    the other word, whose continuation ends with certainty, and wins on total log-probability."""
    table = torch.full((V, V), -30.0)
    table[BOS, 5], table[BOS, 6] = math.log(0.55), math.log(0.45)
    table[5, 5:V] = 0.0  # after 5: four words equally likely, EOS unlikely
    table[5, EOS] = -1.0
    table[6, EOS] = 10.0  # after 6: EOS surely
    table[7:, EOS] = 10.0
    model = TableModel(table)
    ctx = batch_of([[5]])
    cfg = dict(max_len=2, length_penalty=0.0)
    assert generate(model, ctx, DecodeConfig("greedy", **cfg)) != [[6]]
    assert generate(model, ctx, DecodeConfig("beam", beam_size=2, **cfg)) == [[6]]


@pytest.mark.parametrize("method,kw", [("greedy", {}), ("beam", {"beam_size": 5}), ("beam", {"beam_size": 3,
                                       "no_repeat_ngram": 2, "length_penalty": 0.6})])
def test_batched_equals_one_at_a_time_table_model(method, kw):
    model = TableModel(random_table(3), context_weight=1.0, seed=5)
    contexts = random_contexts(10, 4)
    cfg = DecodeConfig(method, max_len=9, **kw)
    batched = generate(model, batch_of(contexts), cfg)
    single = [generate(model, batch_of([c]), cfg)[0] for c in contexts]
    assert batched == single


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batched_equals_one_at_a_time_seq2seq(method):
    """A real model (padding-aware encoder and attention) decodes a padded batch like single contexts."""
    from cldg.models import build_model

    torch.manual_seed(0)
    model = build_model("seq2seq", 40, embedding_dim=16, hidden_size=16, num_layers=1, dropout=0.0)
    with torch.no_grad():  # sharper distributions than at init: argmax ties would be meaningless
        model.out.weight.mul_(8)
    g = torch.Generator().manual_seed(1)
    contexts = []
    for _ in range(8):
        turns = [torch.randint(5, 40, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
        flat = []
        for i, t in enumerate(turns):
            flat += ([SEP] if i else []) + t
        contexts.append((flat, turns))
    cfg = DecodeConfig(method, beam_size=4, max_len=10)
    batched = generate(model, collate_ids(contexts, None, Limits()), cfg)
    single = [generate(model, collate_ids([c], None, Limits()), cfg)[0] for c in contexts]
    assert batched == single
    assert any(len(h) > 0 for h in batched)


def has_repeat(seq: list[int], n: int) -> bool:
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("method", ["greedy", "beam", "topk"])
def test_no_repeat_ngram_inside_the_response(method):
    table = torch.zeros(V, V)
    table[:, 5] = 5.0  # the model loves word 5 forever
    table[:, EOS] = -20.0
    model = TableModel(table)
    ctx = batch_of([[6, 7]])
    plain = generate(model, ctx, DecodeConfig(method, max_len=6, top_k=2), torch.Generator().manual_seed(0))[0]
    assert has_repeat(plain, 2)  # without blocking it repeats
    for n in (1, 2, 3):
        out = generate(model, ctx, DecodeConfig(method, max_len=6, no_repeat_ngram=n, top_k=2),
                       torch.Generator().manual_seed(0))[0]
        # with n = 1 every word may appear once: after the four words only EOS is left
        assert not has_repeat(out, n) and len(out) == (4 if n == 1 else 6)


def test_block_context_ngram():
    table = torch.zeros(V, V)
    table[BOS, 6] = 6.0
    table[6, 7] = 6.0  # the model wants to copy the context bigram "6 7"
    table[:, EOS] = -20.0
    model = TableModel(table)
    ctx = batch_of([[5, 6, 7, 8]])
    assert generate(model, ctx, DecodeConfig("greedy", max_len=2))[0] == [6, 7]
    for method in ("greedy", "beam"):
        out = generate(model, ctx, DecodeConfig(method, max_len=2, block_context_ngram=2))[0]
        assert out[0] == 6 and out[1] != 7
        out1 = generate(model, ctx, DecodeConfig(method, max_len=3, block_context_ngram=1))[0]
        assert not set(out1) & {5, 6, 7, 8}  # no context word at all (only fillers are left)


@pytest.mark.parametrize("method", ["greedy", "beam", "nucleus"])
def test_min_and_max_length(method):
    table = torch.zeros(V, V)
    table[:, EOS] = 8.0  # the model wants to stop at once
    model = TableModel(table)
    ctx = batch_of([[5], [6, 7]])
    gen = torch.Generator().manual_seed(0)
    assert generate(model, ctx, DecodeConfig(method, max_len=5), gen) == [[5], [5]] or method == "nucleus"
    out = generate(model, ctx, DecodeConfig(method, max_len=5, min_len=3), gen)
    assert all(len(h) == 3 for h in out)
    table[:, EOS] = -30.0  # never wants to stop
    out = generate(TableModel(table), ctx, DecodeConfig(method, max_len=4), gen)
    assert all(len(h) == 4 for h in out)
    assert all(t not in (PAD, BOS, SEP, UNK, EOS) for h in out for t in h)


def test_sampling_is_seeded_and_restricted():
    model = TableModel(random_table(9, sharp=0.5), context_weight=0.3, seed=2)
    contexts = random_contexts(16, 8)
    cfg = DecodeConfig("topk", top_k=3, max_len=6)
    a = generate(model, batch_of(contexts), cfg, torch.Generator().manual_seed(5))
    b = generate(model, batch_of(contexts), cfg, torch.Generator().manual_seed(5))
    c = generate(model, batch_of(contexts), cfg, torch.Generator().manual_seed(6))
    assert a == b and a != c
    greedy = generate(model, batch_of(contexts), DecodeConfig("greedy", max_len=6))
    assert generate(model, batch_of(contexts), DecodeConfig("topk", top_k=1, max_len=6),
                    torch.Generator().manual_seed(1)) == greedy
    assert generate(model, batch_of(contexts), DecodeConfig("nucleus", top_p=1e-6, max_len=6),
                    torch.Generator().manual_seed(1)) == greedy
    # first tokens sampled with top-k=2 come from the two best first tokens of that context only
    state = model.init_decoding(batch_of(contexts))
    logits, _ = model.decode_step(state, torch.full((len(contexts),), BOS))
    logits[:, [PAD, BOS, SEP, UNK, EOS]] = float("-inf")
    top2 = logits.topk(2, -1).indices.tolist()
    for seed in range(5):
        out = generate(model, batch_of(contexts), DecodeConfig("topk", top_k=2, max_len=1, min_len=1),
                       torch.Generator().manual_seed(seed))
        assert all(h[0] in allowed for h, allowed in zip(out, top2))
    # nucleus: p=0.5 keeps the smallest prefix reaching 0.5; its tokens are the only first tokens
    probs = torch.softmax(logits, -1)
    sp, si = probs.sort(-1, descending=True)
    nucleus = [si[i, :int(((sp[i].cumsum(0) - sp[i]) <= 0.5).sum())].tolist() for i in range(len(contexts))]
    for seed in range(5):
        out = generate(model, batch_of(contexts), DecodeConfig("nucleus", top_p=0.5, max_len=1, min_len=1),
                       torch.Generator().manual_seed(seed))
        assert all(h[0] in allowed for h, allowed in zip(out, nucleus))


@pytest.mark.parametrize("method,kw", [("topk", {"top_k": 3}), ("nucleus", {"top_p": 0.8})])
def test_row_seeded_sampling_does_not_depend_on_the_batch(method, kw):
    model = TableModel(random_table(4, sharp=0.7), context_weight=0.5, seed=1)
    contexts = random_contexts(12, 2)
    seeds = [1000 + i for i in range(len(contexts))]
    cfg = DecodeConfig(method, max_len=6, **kw)
    batched = generate(model, batch_of(contexts), cfg, row_seeds=seeds)
    single = [generate(model, batch_of([c]), cfg, row_seeds=[s])[0] for c, s in zip(contexts, seeds)]
    assert batched == single
    assert generate(model, batch_of(contexts), cfg, row_seeds=[s + 1 for s in seeds]) != batched
    # the draws follow the distribution: first-token frequencies over many seeds match p (top-k renormalised)
    state = model.init_decoding(batch_of(contexts[:1]))
    logits, _ = model.decode_step(state, torch.tensor([BOS]))
    logits[0, [PAD, BOS, SEP, UNK, EOS]] = float("-inf")
    p = torch.softmax(logits[0], -1)
    firsts = generate(model, batch_of(contexts[:1] * 3000), DecodeConfig("topk", top_k=V, max_len=1),
                      row_seeds=list(range(3000)))
    freq = torch.bincount(torch.tensor([h[0] for h in firsts]), minlength=V).double() / 3000
    assert torch.allclose(freq, p.double(), atol=0.03)


@pytest.mark.parametrize("method", ["greedy", "beam", "topk"])
def test_everything_banned_ends_the_response(method):
    """min_len 6 but only four words under no_repeat_ngram=1: the response ends, never emits a special."""
    model = TableModel(random_table(2))
    out = generate(model, batch_of([[5, 6]]), DecodeConfig(method, max_len=8, min_len=6, no_repeat_ngram=1),
                   torch.Generator().manual_seed(0))[0]
    assert sorted(out) == [5, 6, 7, 8]


@pytest.mark.parametrize("block_floats", [1, 2 * 5 * V])
def test_beam_ranked_in_blocks_of_items_equals_the_reference(monkeypatch, block_floats):
    """A big batch's beam step is ranked a few items at a time (search.BEAM_BLOCK_FLOATS); blocks of one
    or two items give the reference's responses, ties and bans included."""
    from cldg.decoding import search
    from cldg.decoding.reference import generate_reference

    monkeypatch.setattr(search, "BEAM_BLOCK_FLOATS", block_floats)
    model = TableModel(random_table(2, sharp=1.0), context_weight=1.0, seed=2)
    batch = batch_of(random_contexts(7, 3))
    for kw in ({}, {"no_repeat_ngram": 2, "block_context_ngram": 1}, {"length_penalty": 0.0, "min_len": 4}):
        cfg = DecodeConfig("beam", beam_size=5, max_len=7, **kw)
        assert generate(model, batch, cfg) == generate_reference(model, batch, cfg), cfg
    flat = TableModel(torch.zeros(V, V))  # every continuation ties
    cfg = DecodeConfig("beam", beam_size=3, max_len=5, no_repeat_ngram=1)
    assert generate(flat, batch, cfg) == generate_reference(flat, batch, cfg)


def test_finished_items_leave_the_batch_and_the_responses_stay_the_same():
    """An item whose K hypotheses have ended (beam) or whose row has ended (greedy, row-seeded sampling) leaves
    the batch, its rows not computed again (as fairseq does): decode_step sees fewer rows as items finish, and the
    responses are still the reference's and those of one context at a time."""
    from cldg.decoding.reference import generate_reference

    rows_seen = []

    class Counting(TableModel):
        def decode_step(self, state, prev_tokens):
            rows_seen.append(prev_tokens.numel())
            return super().decode_step(state, prev_tokens)

    model = Counting(random_table(2), context_weight=1.0, seed=3)
    model.context_bias[:, EOS] = torch.randn(V, generator=torch.Generator().manual_seed(2)) * 2  # items end apart
    contexts = random_contexts(12, 8)
    for method, kw in (("beam", {}), ("beam", {"no_repeat_ngram": 2, "block_context_ngram": 1, "length_penalty": 0.0}),
                       ("greedy", {"no_repeat_ngram": 2}), ("topk", {"top_k": 3})):
        cfg = DecodeConfig(method, beam_size=3, max_len=12, **kw)
        seeds = list(range(len(contexts))) if method == "topk" else None  # row-seeded sampling: rows leave too
        rows_seen.clear()
        out = generate(model, batch_of(contexts), cfg, row_seeds=seeds)
        width = 3 if method == "beam" else 1
        assert rows_seen[0] == 12 * width and rows_seen == sorted(rows_seen, reverse=True) and len(set(rows_seen)) > 3
        if method != "topk":
            assert out == generate_reference(model, batch_of(contexts), cfg)
        assert out == [generate(model, batch_of([c]), cfg, row_seeds=seeds and [seeds[i]])[0]
                       for i, c in enumerate(contexts)]
