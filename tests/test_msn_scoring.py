"""The fast MSN scoring path (`score_pairs`) against the reference (`score_pairs_reference`, batches of
`MSN.forward`): the same probabilities to float rounding and the same rankings, whatever the batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cldg.matching.msn import MSN, MSNConfig, MSNMatcher, score_pairs, score_pairs_reference


def tiny_msn(seed: int, **kw) -> MSN:
    torch.manual_seed(seed)
    base = dict(vocab_size=60, embed_dim=12, hidden=16, max_turns=4, max_turn_len=9, hops=3, gamma=0.3,
                cnn_channels=[4, 6, 8], match_dim=16, gru_hidden=16, dropout=0.1)
    model = MSN(MSNConfig(**(base | kw)))
    with torch.no_grad():  # move every weight off its tidy init (identity bilinear forms, constant hop fuse)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.embed.weight[0].zero_()
    return model.train()  # scoring must switch dropout off itself, and give the mode back


def mining_like_pairs(seed: int, n_contexts: int = 12, n_candidates: int = 7):
    """Each context against several responses, responses reused across contexts, some pairs twice,
    turns and responses of every length up to the limit, and one context without turns."""
    rng = np.random.default_rng(seed)

    def seq(hi):
        return rng.integers(5, 60, size=int(rng.integers(1, hi + 1))).tolist()

    contexts = [[seq(9) for _ in range(int(rng.integers(1, 5)))] for _ in range(n_contexts)] + [[]]
    responses = [seq(9) for _ in range(3 * n_candidates)]
    pairs = [(c, responses[int(j)]) for c in contexts for j in rng.choice(len(responses), n_candidates, replace=False)]
    pairs += pairs[:5]  # duplicates
    return [pairs[i] for i in rng.permutation(len(pairs))]


@pytest.mark.parametrize("seed,heads", [(0, 1), (1, 2), (2, 4)])
def test_fast_scores_equal_the_reference_with_identical_rankings(seed, heads):
    model = tiny_msn(seed, heads=heads, gamma=0.5)  # gamma 0.5: some turns are dropped by the selector
    pairs = mining_like_pairs(seed)
    ref = score_pairs_reference(model, pairs, 16, "cpu")
    assert model.training
    for batch_size, block in ((16, 8192), (3, 10), (1, 1), (64, 37)):
        fast = score_pairs(model, pairs, batch_size, "cpu", block_pairs=block)
        assert model.training and fast.dtype == np.float32 and fast.shape == (len(pairs),)
        np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=0)
        # identical rankings of each context's distinct candidates (the reference may score a pair given
        # twice 1 ulp apart, by its place in a batch; the fast path scores it once)
        first: dict[str, dict[str, int]] = {}
        for i, (c, r) in enumerate(pairs):
            first.setdefault(repr(c), {}).setdefault(repr(r), i)
        for rows in (list(f.values()) for f in first.values()):
            assert np.array_equal(np.argsort(-ref[rows], kind="stable"), np.argsort(-fast[rows], kind="stable"))
        seen: dict[str, float] = {}
        for (c, r), s in zip(pairs, fast):
            assert seen.setdefault(repr((c, r)), s) == s
    assert len(set(np.round(ref, 4))) > len(pairs) // 3  # the scores are spread out, not all alike


def test_empty_input_and_a_context_without_turns():
    model = tiny_msn(3)
    assert score_pairs(model, [], 8, "cpu").shape == (0,)
    pairs = [([], [7, 8]), ([[5, 6]], [9])]
    np.testing.assert_allclose(score_pairs(model, pairs, 8, "cpu"), score_pairs_reference(model, pairs, 8, "cpu"),
                               atol=1e-6)
    # alone (the reference's MSN.forward fails on a batch without any turn): no turn, the GRU state stays 0
    np.testing.assert_allclose(score_pairs(model, pairs[:1], 8, "cpu"),
                               torch.sigmoid(model.out.bias.detach()).numpy(), atol=1e-6)


def test_the_matcher_scores_with_the_fast_path(monkeypatch):
    import cldg.matching.msn.scoring as scoring

    called = []
    monkeypatch.setattr(scoring, "score_pairs", lambda *a, **k: called.append(a) or np.zeros(0, np.float32))
    MSNMatcher(tiny_msn(4), tokenizer=None).score_ids([])
    assert called
