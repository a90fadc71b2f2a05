"""The objectives that followed the paper (cldg/training/objectives.py) and contrastive search
(cldg/decoding/contrastive_search.py): each against a small example worked by hand and against a direct
transcription of its formula in plain floats; the paper's Eq. 2 with beta = 1 is BCO's pair loss with
beta = 1, delta = 0."""
from __future__ import annotations

import math

import pytest
import torch

import torch.nn.functional as F

from cldg.training import objectives
from cldg.training.objectives import (bco_pair_loss, ct_loss, dpo_loss, earlier_candidates, kto_loss,
                                      repeated_ngram_mask, simctg_loss, unlikelihood_sequence_loss,
                                      unlikelihood_token_loss)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def lp_rows(*rows: list[float]) -> torch.Tensor:
    """[1, T, V] log-probs from probability rows."""
    return torch.tensor([rows], dtype=torch.float64).log()


def random_case(seed: int, B: int = 3, T: int = 7, V: int = 5):
    """Log-probs, targets with repeats (small V), and masks with padding at the end of two rows."""
    g = torch.Generator().manual_seed(seed)
    lprobs = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2, -1)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    return lprobs, targets, mask


# -- unlikelihood ---------------------------------------------------------------------------------------------

def test_token_unlikelihood_by_hand():
    # targets a b a over V = {a, b, c}: t=0 no earlier token; t=1 (b): C = {a}; t=2 (a): C = {b} (a itself excluded)
    lprobs = lp_rows([0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3])
    got = unlikelihood_token_loss(lprobs, torch.tensor([[0, 1, 0]]), torch.ones(1, 3, dtype=torch.bool))
    assert got.item() == pytest.approx((-math.log(1 - 0.2) - math.log(1 - 0.1)) / 3)


def transcribe_token_ul(lprobs, targets, mask) -> float:
    total, n = 0.0, 0
    for b in range(targets.size(0)):
        real = [t for t in range(targets.size(1)) if mask[b, t]]
        for t in real:
            y = int(targets[b, t])
            cands = {int(targets[b, j]) for j in real if j < t} - {y}
            total += -sum(math.log(max(1 - math.exp(float(lprobs[b, t, c])), 1e-5)) for c in cands)
            n += 1
    return total / n


def test_token_unlikelihood_equals_its_transcription():
    for seed in range(3):
        case = random_case(seed)
        assert unlikelihood_token_loss(*case).item() == pytest.approx(transcribe_token_ul(*case), rel=1e-6)


def test_repeated_ngrams_by_hand():
    # 1 2 1 2 1 with n = 2: (1,2) again at 2 -> tokens 2, 3; (2,1) again at 3 -> tokens 3, 4; padding never counts
    tokens = torch.tensor([[1, 2, 1, 2, 1, 2], [5, 5, 5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert repeated_ngram_mask(tokens, mask, 2).tolist() == [[False, False, True, True, True, False],
                                                             [False, True, True, False, False, False]]


def test_sequence_unlikelihood_by_hand():
    tokens = torch.tensor([[1, 2, 1, 2, 1]])
    p = [0.5, 0.4, 0.3, 0.2, 0.1]
    got = unlikelihood_sequence_loss(torch.tensor([p]).log(), tokens, torch.ones(1, 5, dtype=torch.bool), n=2)
    assert got.item() == pytest.approx(-(math.log(1 - 0.3) + math.log(1 - 0.2) + math.log(1 - 0.1)) / 5, rel=1e-6)


# -- CT --------------------------------------------------------------------------------------------------------

def test_ct_by_hand():
    # targets a b a: t=0 S = {} -> log 1 = 0; t=1 S = {a}; t=2 S = {b}
    p = ([0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3])
    got = ct_loss(lp_rows(*p), torch.tensor([[0, 1, 0]]), torch.ones(1, 3, dtype=torch.bool))
    want = (0 + math.log(1 + 0.2 / 0.5) + math.log(1 + 0.1 / 0.6)) / 3  # exp(z_v - z_y) = p_v / p_y
    assert got.item() == pytest.approx(want)


def test_ct_window_keeps_the_last_tokens_only():
    # targets a b c a, uniform probabilities until the last step. t=0: {}; t=1: {a}; t=2: {b} (window 1) or
    # {a, b}; t=3 (a): {c} (window 1) or {b, c} (window 2, or all earlier tokens without a window: a is the target)
    p = [[0.25, 0.25, 0.25, 0.25]] * 3 + [[0.4, 0.1, 0.2, 0.3]]
    targets, mask = torch.tensor([[0, 1, 2, 0]]), torch.ones(1, 4, dtype=torch.bool)
    want = {1: (0 + math.log(2) + math.log(2) + math.log(1 + 0.2 / 0.4)) / 4,
            2: (0 + math.log(2) + math.log(3) + math.log(1 + 0.1 / 0.4 + 0.2 / 0.4)) / 4}
    want[None] = want[2]
    for window, value in want.items():
        assert ct_loss(lp_rows(*p), targets, mask, window=window).item() == pytest.approx(value), window


def transcribe_ct(lprobs, targets, mask, window=None) -> float:
    total, n = 0.0, 0
    for b in range(targets.size(0)):
        real = [t for t in range(targets.size(1)) if mask[b, t]]
        for t in real:
            y = int(targets[b, t])
            lo = 0 if window is None else t - window
            negs = {int(targets[b, j]) for j in real if lo <= j < t} - {y}
            total += math.log(1 + sum(math.exp(float(lprobs[b, t, v] - lprobs[b, t, y])) for v in negs))
            n += 1
    return total / n


@pytest.mark.parametrize("window", [None, 1, 3])
def test_ct_equals_its_transcription(window):
    for seed in range(3):
        case = random_case(seed)
        assert ct_loss(*case, window=window).item() == pytest.approx(transcribe_ct(*case, window), rel=1e-6)


def seen_before_onehot(targets, mask, vocab, window=None):
    """The one-hot implementation the candidate sets replaced (issue 16 review): [B, T, V] bool."""
    onehot = F.one_hot(targets, vocab).to(torch.float32) * mask.unsqueeze(-1)
    counts = onehot.cumsum(1) - onehot
    if window is not None:
        shifted = torch.zeros_like(counts)
        if window + 1 < counts.size(1):
            shifted[:, window + 1:] = onehot.cumsum(1)[:, :-(window + 1)]
        counts = counts - shifted
    return (counts > 0.5) & ~F.one_hot(targets, vocab).bool()


def ul_onehot(lprobs, targets, mask):
    cands = seen_before_onehot(targets, mask, lprobs.size(-1))
    per_token = -torch.where(cands, objectives.log_one_minus_exp(lprobs.float()), torch.zeros(())).sum(-1)
    return torch.where(mask, per_token, torch.zeros(())).sum() / mask.sum()


def ct_onehot(lprobs, targets, mask, window=None):
    lprobs = lprobs.float()
    diff = (lprobs - lprobs.gather(-1, targets.unsqueeze(-1))).masked_fill(
        ~seen_before_onehot(targets, mask, lprobs.size(-1), window), float("-inf"))
    per_token = torch.logsumexp(torch.cat([torch.zeros_like(diff[..., :1]), diff], -1), -1)
    return torch.where(mask, per_token, torch.zeros(())).sum() / mask.sum()


@pytest.mark.parametrize("window", [None, 0, 1, 3, 20])
def test_candidate_sets_and_losses_equal_the_one_hot_implementation(window):
    # random targets with many repeats (V = 4), padding in the middle of rows too, and a wider vocabulary row
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        B, T, V = 4, 11, 4 + 40 * (seed % 2)
        lprobs = torch.log_softmax(torch.randn(B, T, V, generator=g) * 3, -1)
        targets = torch.randint(0, min(V, 4 + seed), (B, T), generator=g)
        mask = torch.rand(B, T, generator=g) > 0.25
        cands = earlier_candidates(targets, mask, window)
        as_vocab = torch.zeros(B, T, V, dtype=torch.long).scatter_add_(
            -1, targets.unsqueeze(1).expand(-1, T, -1), cands.long()) > 0
        assert torch.equal(as_vocab, seen_before_onehot(targets, mask, V, window))
        assert int(cands.sum()) == int(seen_before_onehot(targets, mask, V, window).sum())  # each id once
        torch.testing.assert_close(ct_loss(lprobs, targets, mask, window), ct_onehot(lprobs, targets, mask, window),
                                   rtol=1e-6, atol=1e-7)
        if window is None:
            torch.testing.assert_close(unlikelihood_token_loss(lprobs, targets, mask),
                                       ul_onehot(lprobs, targets, mask), rtol=1e-6, atol=1e-7)


def test_unlikelihood_and_ct_build_no_vocabulary_one_hots(monkeypatch):
    # GPT-2's vocabulary at B = 32, T = 64 made the [B, T, V] int64/float32 one-hots and cumsums several GB
    def refuse(*args, **kwargs):
        raise AssertionError("a [B, T, V] one-hot")
    monkeypatch.setattr(objectives.F, "one_hot", refuse)
    monkeypatch.setattr(torch.Tensor, "cumsum", refuse)
    case = random_case(0)
    assert unlikelihood_token_loss(*case).item() == pytest.approx(transcribe_token_ul(*case), rel=1e-6)
    assert ct_loss(*case, window=2).item() == pytest.approx(transcribe_ct(*case, 2), rel=1e-6)


# -- SimCTG ----------------------------------------------------------------------------------------------------

def test_simctg_by_hand():
    # h0 = (1, 0), h1 = (0, 1), h2 = (1, 1): cos 0, 1/sqrt2, 1/sqrt2; each ordered pair costs max(0, 0.5 - 1 + cos)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, True, False]])  # the padded 4th state would add 4 more costly pairs
    want = 4 * (1 / math.sqrt(2) - 0.5) / 6
    assert simctg_loss(hidden, mask, margin=0.5).item() == pytest.approx(want, rel=1e-6)


def transcribe_simctg(hidden, mask, margin) -> float:
    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    total, n = 0.0, 0
    for b in range(hidden.size(0)):
        hs = [hidden[b, t].tolist() for t in range(hidden.size(1)) if mask[b, t]]
        for i in range(len(hs)):
            for j in range(len(hs)):
                if i != j:
                    total += max(0.0, margin - cos(hs[i], hs[i]) + cos(hs[i], hs[j]))
                    n += 1
    return total / n


def test_simctg_equals_its_transcription_and_pushes_states_apart():
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(3, 6, 4, generator=g, dtype=torch.float64) + 1.0).requires_grad_(True)
    mask = random_case(0, T=6)[2]
    got = simctg_loss(hidden, mask, margin=0.5)
    assert got.item() == pytest.approx(transcribe_simctg(hidden.detach(), mask, 0.5), rel=1e-6)
    got.backward()
    assert hidden.grad[~mask].abs().max() == 0  # padding gets no gradient
    with torch.no_grad():
        after = simctg_loss(hidden - 0.1 * hidden.grad, mask)
    assert after < got


# -- DPO, BCO, KTO ---------------------------------------------------------------------------------------------

def test_dpo_and_bco_by_hand():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-2.0, -3.0, -2.5, -2.5))
    # DPO: beta ((pc - rc) - (pr - rr)) = 0.1 (0.5 + 0.5) = 0.1
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(math.log(1 + math.exp(-0.1)))
    # BCO: chosen reward 0.05, rejected -0.05, shifted by delta = 0.02
    want = -math.log(sig(0.05 - 0.02)) - math.log(sig(-(-0.05 - 0.02)))
    assert bco_pair_loss(pc, pr, rc, rr, beta=0.1, delta=0.02).item() == pytest.approx(want)


def pair_logps(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)]


def test_dpo_bco_kto_equal_their_transcriptions():
    for seed in range(3):
        pc, pr, rc, rr = pair_logps(seed)
        pm, rm = pair_logps(seed + 10)[:2]
        rows = list(zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()))
        dpo = sum(-math.log(sig(0.3 * ((a - c) - (b - d)))) for a, b, c, d in rows) / len(rows)
        assert dpo_loss(pc, pr, rc, rr, beta=0.3).item() == pytest.approx(dpo, rel=1e-6)
        bco = sum(-math.log(sig(0.3 * (a - c) - 0.1)) - math.log(1 - sig(0.3 * (b - d) - 0.1)) for a, b, c, d in rows)
        assert bco_pair_loss(pc, pr, rc, rr, beta=0.3, delta=0.1).item() == pytest.approx(bco / len(rows), rel=1e-6)
        for shift in (0.0, 5.0):  # z0 clamped at 0, then a positive one
            z0 = max(0.0, sum(a - b + shift for a, b in zip(pm.tolist(), rm.tolist())) / len(pm))
            terms = [1.5 * (1 - sig(0.3 * ((a - c) - z0))) for a, b, c, d in rows] + \
                    [0.5 * (1 - sig(0.3 * (z0 - (b - d)))) for a, b, c, d in rows]
            got = kto_loss(pc, pr, rc, rr, pm + shift, rm, beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)
            assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_kto_reference_point_carries_no_gradient():
    pc, pr, rc, rr = pair_logps(0)
    pm = (pair_logps(1)[0] + 30).requires_grad_(True)  # positive z0
    pc.requires_grad_(True)
    kto_loss(pc, pr, rc, rr, pm, pair_logps(1)[1]).backward()
    assert pm.grad is None and pc.grad.abs().sum() > 0


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_the_papers_eq2_is_bco_pair_with_beta_1_and_delta_0(beta):
    """cldg's eq2 on D = log p_target - log p_ref (contrastive_group_loss multiplies D by its beta) is
    -log sig(beta D+) - log sig(-beta D-) per group: BCO's pair loss with the same beta and delta = 0."""
    from cldg.training.losses import contrastive_loss

    pc, pr, rc, rr = pair_logps(3)
    d_pos, d_neg = (pc - rc).unsqueeze(1), (pr - rr).unsqueeze(1)
    eq2 = contrastive_loss(beta * d_pos, beta * d_neg, torch.ones_like(d_pos), -torch.ones_like(d_neg), variant="eq2")
    assert eq2.item() == pytest.approx(bco_pair_loss(pc, pr, rc, rr, beta=beta, delta=0.0).item(), rel=1e-6)
    assert eq2.item() != pytest.approx(bco_pair_loss(pc, pr, rc, rr, beta=beta, delta=0.5).item(), rel=1e-3)


# -- contrastive search ----------------------------------------------------------------------------------------

def test_contrastive_scores_by_hand():
    from cldg.decoding.contrastive_search import contrastive_scores

    probs = torch.tensor([[0.5, 0.3]])
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    prev = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])  # (0, 1) is padding: candidate 2 is only 1/sqrt2 from the prefix
    got = contrastive_scores(probs, cand, prev, mask, alpha=0.6)
    want = [0.4 * 0.5 - 0.6 * 1.0, 0.4 * 0.3 - 0.6 / math.sqrt(2)]
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)
    assert int(got.argmax()) == 1  # less probable but less like the prefix: contrastive search takes it


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_contrastive_search_with_alpha_0_is_greedy_and_otherwise_follows_the_scores(kind, tmp_path_factory):
    from test_hf_models import CONTEXTS, build_bart, build_gpt2  # the tiny models

    from cldg.decoding.contrastive_search import contrastive_search
    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model

    path = (build_gpt2 if kind == "gpt2" else build_bart)(tmp_path_factory.mktemp(kind))
    model = load_hf_model(f"hf:{path}")
    greedy = model.generate_ids(CONTEXTS, DecodeConfig(method="greedy", max_len=6, min_len=0))
    assert contrastive_search(model, CONTEXTS, k=3, alpha=0.0, max_len=6) == greedy
    penalised = contrastive_search(model, CONTEXTS, k=3, alpha=0.9, max_len=6)
    assert all(len(r) <= 6 for r in penalised) and penalised != greedy
    # --min-len: EOS cannot end a shorter response (evaluate passes it); with alpha 0 it is greedy's min_new_tokens
    assert min(len(r) for r in contrastive_search(model, CONTEXTS, k=3, alpha=0.0, max_len=6)) < 4
    at_least_4 = contrastive_search(model, CONTEXTS, k=3, alpha=0.0, max_len=6, min_len=4)
    assert all(len(r) >= 4 for r in at_least_4)
    assert at_least_4 == model.generate_ids(CONTEXTS, DecodeConfig(method="greedy", max_len=6, min_len=4))
