"""The four dialogue models, batching and the sequence log-probability: shapes, masking, incremental
decoding = teacher forcing, overfitting a few pairs, save/load, embedding init. Tiny sizes, random ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cldg.data.batching import DialogueBatch, EncodedPairs, Limits, bucketed_batches, collate, collate_ids
from cldg.errors import CldgError
from cldg.models import build_model, load_model, model_names, save_model
from cldg.text.tokenizer import BOS, EOS, PAD, SEP
from cldg.training.losses import nll_loss, sequence_logprob

V = 40
LIMITS = Limits(max_context_turns=3, max_turn_len=8, max_context_len=20, max_response_len=8)
TINY = {
    "seq2seq": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.1},
    "hred": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.1},
    "hran": {"embedding_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.1},
    "transformer": {"embedding_dim": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 32, "dropout": 0.1,
                    "max_positions": 32},
}


def tiny(name: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(name, V, **(TINY[name] | over))


def random_pairs(n: int, seed: int = 0):
    """n (context, response) pairs of random word ids (5..V-1): 1-3 turns of 1-7 words, responses of 1-6."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        turns = [list(rng.integers(5, V, rng.integers(1, 8))) for _ in range(rng.integers(1, 4))]
        flat = []
        for i, t in enumerate(turns):
            flat += ([SEP] if i else []) + [int(x) for x in t]
        pairs.append(((flat, [[int(x) for x in t] for t in turns]), [int(x) for x in rng.integers(5, V, rng.integers(1, 7))]))
    return pairs


def batch_of(pairs) -> DialogueBatch:
    return collate_ids([c for c, _ in pairs], [r for _, r in pairs], LIMITS)


def logprobs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logprob(model(batch), batch.response_out, PAD)


# -- batching -----------------------------------------------------------------------------------------

class FakeTokenizer:
    """Word -> id by a fixed table (the batching contract only needs encode_batch)."""

    def __init__(self):
        self.ids = {}

    def encode_batch(self, texts):
        return [[self.ids.setdefault(w, 5 + len(self.ids)) for w in t.split()] for t in texts]


def test_collate_layout():
    tok = FakeTokenizer()
    limits = Limits(max_context_turns=2, max_turn_len=3, max_context_len=6, max_response_len=4)
    tok.encode_batch(["a b c d e f g h x y z"])
    c_, d_, e_, g_, h_, x_, y_, z_ = (tok.ids[w] for w in "cdeghxyz")
    b = collate(tok, [["a b", "c d e f", "g"], ["h"]], ["x y z w v", "y"], limits)
    # last 2 turns, each cut to 3 tokens, joined with SEP, oldest first, right-padded
    assert b.context.tolist() == [[c_, d_, e_, SEP, g_], [h_, PAD, PAD, PAD, PAD]]
    # turn slots left-padded: the last turn sits at index U-1
    assert b.context_turns.tolist() == [[[c_, d_, e_], [g_, PAD, PAD]], [[PAD, PAD, PAD], [h_, PAD, PAD]]]
    # response cut to max_response_len - 1 words, then BOS r / r EOS
    assert b.response_in.tolist() == [[BOS, x_, y_, z_], [BOS, y_, PAD, PAD]]
    assert b.response_out.tolist() == [[x_, y_, z_, EOS], [y_, EOS, PAD, PAD]]
    assert b.size == 2
    long = collate(tok, [["a b c d e f g h"]], None, Limits(1, 10, 4, 4))
    assert long.context.tolist() == [[e_, tok.ids["f"], g_, h_]]  # the flat context keeps its last words
    assert long.response_in.tolist() == [[BOS]] and long.response_out.tolist() == [[EOS]]


def test_bucketed_batches_cover_everything_once_and_shard_under_ddp():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 60, 1000)]
    batches = bucketed_batches(lengths, 16, seed=3, epoch=0, bucket_factor=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == bucketed_batches(lengths, 16, seed=3, epoch=0, bucket_factor=10)  # seeded
    assert batches != bucketed_batches(lengths, 16, seed=3, epoch=1, bucket_factor=10)  # reshuffled per epoch

    def padding(bs):  # padded slots / all slots, as a batch pads to its longest item
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs) / sum(
            max(lengths[i] for i in b) * len(b) for b in bs)

    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i:i + 16] for i in range(0, 1000, 16)]
    assert padding(batches) < 0.5 * padding(random_batches)
    ranks = [bucketed_batches(lengths, 16, 3, 0, rank=r, world_size=2, bucket_factor=10) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # ranks step together
    seen = [set(i for b in r for i in b) for r in ranks]
    assert not seen[0] & seen[1]


def test_encoded_pairs_batches_keep_padding_low_in_responses_and_contexts():
    rng = np.random.default_rng(1)

    def sentence():
        return " ".join(f"w{i}" for i in range(int(rng.integers(1, 30))))

    contexts = [[sentence() for _ in range(int(rng.integers(1, 4)))] for _ in range(2000)]
    pairs = EncodedPairs(FakeTokenizer(), contexts, [sentence() for _ in range(2000)], Limits())
    batches = list(pairs.iter_batches(32, seed=0, epoch=0))
    assert sum(b.size for b in batches) == 2000

    def share(x):
        return float(sum(b.__dict__[x].ne(PAD).sum() for b in batches) / sum(b.__dict__[x].numel() for b in batches))

    assert share("response_out") > 0.85 and share("context") > 0.6, (share("response_out"), share("context"))


# -- losses ----------------------------------------------------------------------------------------

def test_sequence_logprob_matches_a_per_token_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.tensor([[5, 6, 7, 3, 0], [8, 3, 0, 0, 0], [9, 9, 9, 9, 3]])
    expected = []
    for b in range(3):
        total = 0.0
        for t in range(5):
            if targets[b, t] != PAD:
                total += float(torch.log(torch.softmax(logits[b, t].double(), -1)[targets[b, t]]))
        expected.append(total)
    assert torch.allclose(sequence_logprob(logits, targets, PAD).double(), torch.tensor(expected, dtype=torch.double),
                          atol=1e-5)
    loss, n = nll_loss(logits, targets, PAD)
    assert n == 11 and abs(float(loss) + sum(expected) / 11) < 1e-5


# -- the models ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", model_names())
def test_forward_shapes_and_padding_does_not_change_logp(name):
    model = tiny(name).eval()
    pairs = random_pairs(6, seed=1)
    batch = batch_of(pairs)
    logits = model(batch)
    assert logits.shape == (6, batch.response_in.size(1), V)
    assert torch.isfinite(logits).all()
    together = logprobs(model, batch)
    alone = torch.cat([logprobs(model, batch_of([p])) for p in pairs])
    assert torch.allclose(together, alone, atol=1e-4), (together, alone)
    # an empty context is legal (the first turn of a dialogue has none in some corpora)
    empty = batch_of([(([], []), [7, 8])])
    assert torch.isfinite(logprobs(model, empty)).all()


def test_an_empty_turn_between_real_ones_counts_so_the_oldest_turn_is_kept():
    """A turn that tokenizes to nothing leaves an all-PAD slot between real ones: the turn count starts at the first
    non-empty slot, so HRED still reads the oldest turn (counting non-empty slots dropped it)."""
    from cldg.models.base import turn_count

    def context(first):
        return ([*first, SEP, SEP, 7], [first, [], [7]])

    batch = batch_of([(context([5, 6]), [8]), (([9], [[9]]), [8]), (([], []), [8])])
    assert turn_count(batch.context_turns).tolist() == [3, 1, 0]
    model = tiny("hred").eval()
    a, b = (logprobs(model, batch_of([(context(first), [8, 9])])) for first in ([5, 6], [11, 12]))
    assert not torch.allclose(a, b)  # the oldest turn changes the encoding


@pytest.mark.parametrize("name", ["seq2seq", "hred", "hran", "transformer"])
def test_group_forward_encodes_shared_contexts_once_and_gives_logits_only_where_asked(name, monkeypatch):
    """forward(batch, shared_contexts, at): the logits of a plain forward at the real tokens, with each distinct
    context encoded once (what a contrastive batch's response-side samples share)."""
    model = tiny(name).eval()
    assert model.group_forward
    pairs = random_pairs(4, seed=3)
    # rows 0, 2, 3 share pair 0's context; row 1 has its own (as a group's pair, its samples and a context-side one)
    rows = [pairs[0], pairs[1], (pairs[0][0], pairs[2][1]), (pairs[0][0], pairs[3][1])]
    batch = batch_of(rows)
    shared = (torch.tensor([0, 1]), torch.tensor([0, 1, 0, 0]))
    at = batch.response_out.ne(PAD)
    encoded = []
    encoder = "encode_memory" if hasattr(model, "encode_memory") else "init_decoding"  # the transformer's: no KV cache
    real_encode = getattr(type(model), encoder)
    monkeypatch.setattr(type(model), encoder, lambda self, b: encoded.append(b.context.size(0)) or real_encode(self, b))
    with torch.no_grad():
        full = model(batch)
        fast = model(batch, shared_contexts=shared, at=at)
    assert encoded == [4, 2]  # the plain forward encoded 4 contexts, the shared one 2
    assert fast.shape == (int(at.sum()), V)
    assert torch.allclose(fast, full[at], atol=1e-5)


@pytest.mark.parametrize("name", model_names())
def test_incremental_decoding_equals_teacher_forcing_and_reorder_state(name):
    model = tiny(name, seed=1).eval()
    batch = batch_of(random_pairs(4, seed=2))
    with torch.no_grad():
        full = model(batch)
        state = model.init_decoding(batch)
        steps = []
        for t in range(batch.response_in.size(1)):
            logits, state = model.decode_step(state, batch.response_in[:, t])
            steps.append(logits)
        stepped = torch.stack(steps, 1)
        real = batch.response_out.ne(PAD)
        assert torch.allclose(stepped[real], full[real], atol=1e-4)
        # reorder: rows 2, 2, 0 continue exactly as those rows would
        state = model.init_decoding(batch)
        _, state = model.decode_step(state, batch.response_in[:, 0])
        index = torch.tensor([2, 2, 0])
        state = model.reorder_state(state, index)
        logits, _ = model.decode_step(state, batch.response_in[index, 1])
        assert torch.allclose(logits, full[index, 1], atol=1e-4)


@pytest.mark.parametrize("name", model_names())
def test_tiny_model_overfits_a_few_pairs(name):
    model = tiny(name, seed=2, dropout=0.0)
    batch = batch_of(random_pairs(4, seed=3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss, _ = nll_loss(model(batch), batch.response_out, PAD)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.1, (first, loss.item())


@pytest.mark.parametrize("name", model_names())
def test_save_load_gives_identical_logprobs(name, tmp_path):
    model = tiny(name, seed=3).eval()
    batch = batch_of(random_pairs(5, seed=4))
    save_model(tmp_path, model)
    loaded = load_model(tmp_path, "cpu")
    assert not loaded.training
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(logprobs(model, batch), logprobs(loaded, batch))


def test_transformer_learned_positions_and_bad_configs(tmp_path):
    model = tiny("transformer", positions="learned").eval()
    batch = batch_of(random_pairs(3))
    save_model(tmp_path, model)
    assert torch.equal(logprobs(model, batch), logprobs(load_model(tmp_path), batch))
    long = batch_of([((list(range(5, 25)) * 3, [list(range(5, 25)) * 3]), [7])])  # 60 > 32 positions
    with pytest.raises(CldgError, match="longer than this transformer's learned positions"):
        model(long)
    sinusoidal = tiny("transformer").eval()
    assert torch.isfinite(logprobs(sinusoidal, long)).all()  # sinusoids extend past max_positions
    with pytest.raises(CldgError, match="unknown config keys"):
        build_model("seq2seq", V, hidden=3)
    with pytest.raises(CldgError, match="unknown"):
        build_model("gpt", V)
    with pytest.raises(CldgError, match="must be even"):
        build_model("seq2seq", V, hidden_size=15)
    with pytest.raises(CldgError, match="not a multiple of --num-heads 3"):
        build_model("transformer", V, embedding_dim=16, num_heads=3)
    with pytest.raises(CldgError, match="model.json"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("emb_dim", [12, 7])
def test_init_embeddings_from_word_vectors(emb_dim):
    model = tiny("seq2seq", embedding_dim=emb_dim)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(V, 12)).astype(np.float32)
    has = np.zeros(V, dtype=bool)
    has[10:20] = True
    before = model.embedding.weight.detach().clone()
    assert model.init_embeddings(vectors, has) == 10
    after = model.embedding.weight.detach()
    assert torch.equal(after[:10], before[:10]) and torch.equal(after[20:], before[20:])
    if emb_dim == 12:  # same size: the vectors themselves, rescaled to the embedding's spread
        cos = torch.nn.functional.cosine_similarity(after[10:20], torch.from_numpy(vectors[10:20]), dim=-1)
        assert torch.allclose(cos, torch.ones(10), atol=1e-5)
    # similar words stay similar: the init keeps the vectors' geometry (a linear map)
    g = torch.from_numpy(vectors[10:20])
    assert torch.corrcoef(torch.stack([(g @ g.T).flatten(), (after[10:20] @ after[10:20].T).flatten()]))[0, 1] > 0.5


class FunctionRecipe:
    """A training recipe (cldg/training/recipes) made of three functions, for the trainer's tests."""

    def __init__(self, batches, loss, validate, batches_per_epoch: int):
        self.batches, self.loss, self.validate, self.batches_per_epoch = batches, loss, validate, batches_per_epoch
