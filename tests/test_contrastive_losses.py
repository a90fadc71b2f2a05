"""The group-wise contrastive losses (Cai et al., 2020, Eq. 2, 3, 4 and the released code's soft form):
each against a direct transcription of its formula, the direction of its gradients, masks and
numerical safety."""
from __future__ import annotations

import math

import pytest
import torch

from cldg.training.losses import LOSS_VARIANTS, S_POS_FLOOR, contrastive_loss

K = 2
P, N = 2 * K + 1, 2 * K


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_made(seed: int = 0, groups: int = 4):
    """D in [-3, 3], s+ in (0, 1] with slot 0 = 1, s- in [-1, 0], and a few missing samples."""
    g = torch.Generator().manual_seed(seed)
    d_pos = torch.rand(groups, P, generator=g, dtype=torch.float64) * 6 - 3
    d_neg = torch.rand(groups, N, generator=g, dtype=torch.float64) * 6 - 3
    s_pos = torch.rand(groups, P, generator=g, dtype=torch.float64) * 0.95 + 0.05
    s_pos[:, 0] = 1.0
    s_neg = -torch.rand(groups, N, generator=g, dtype=torch.float64)
    pos_mask = torch.ones(groups, P, dtype=torch.bool)
    neg_mask = torch.ones(groups, N, dtype=torch.bool)
    pos_mask[1, 2:] = False          # a group with only 2 positives
    neg_mask[2, 0] = False           # a group whose first negative is missing
    neg_mask[3, :] = False           # a group with no negatives at all
    return d_pos, d_neg, s_pos, s_neg, pos_mask, neg_mask


def transcribe(variant, d_pos, d_neg, s_pos, s_neg, pos_mask, neg_mask) -> float:
    """The formulas as written, one group and one sample at a time, in plain floats."""
    total = 0.0
    G = d_pos.shape[0]
    for g in range(G):
        pos = [j for j in range(P) if pos_mask[g, j]]
        neg = [j for j in range(N) if neg_mask[g, j]]
        if variant == "eq2":
            pos, neg = pos[:1], neg[:1]
        pos_terms, neg_terms = [], []
        for j in pos:
            D, s = float(d_pos[g, j]), float(s_pos[g, j])
            if variant == "eq4":
                pos_terms.append(math.log(s * sig(D)))
            elif variant in ("eq3", "eq2"):
                pos_terms.append(math.log(sig(D)))
            else:  # soft: -log(m (sig(D) - 1/2) + 1/2), m = 2 prob - 1, prob = s+
                m = 2 * s - 1
                pos_terms.append(math.log(m * (sig(D) - 0.5) + 0.5))
        for j in neg:
            D, s = float(d_neg[g, j]), float(s_neg[g, j])
            if variant == "eq4":
                neg_terms.append(math.log(1 + s * sig(D)))
            elif variant in ("eq3", "eq2"):
                neg_terms.append(math.log(1 - sig(D)))
            else:  # prob = 1 + s-
                m = 2 * (1 + s) - 1
                neg_terms.append(math.log(m * (sig(D) - 0.5) + 0.5))
        loss = 0.0
        if pos_terms:
            loss -= sum(pos_terms) / len(pos_terms)
        if neg_terms:
            loss -= sum(neg_terms) / len(neg_terms)
        total += loss
    return total / G


@pytest.mark.parametrize("variant", LOSS_VARIANTS)
def test_each_variant_equals_a_direct_transcription_of_its_formula(variant):
    for seed in range(3):
        args = hand_made(seed)
        got = contrastive_loss(*args, variant=variant).item()
        assert got == pytest.approx(transcribe(variant, *args), rel=1e-5, abs=1e-6)


def test_eq3_is_eq4_with_unit_scores_and_eq2_uses_the_pair_and_the_first_negative_only():
    d_pos, d_neg, s_pos, s_neg, pm, nm = hand_made(1)
    eq3 = contrastive_loss(d_pos, d_neg, s_pos, s_neg, pm, nm, variant="eq3")
    ones = contrastive_loss(d_pos, d_neg, torch.ones_like(s_pos), -torch.ones_like(s_neg), pm, nm, variant="eq4")
    assert eq3.item() == pytest.approx(ones.item(), rel=1e-6)
    # eq2 does not see any slot but the pair itself and the first present negative
    eq2 = contrastive_loss(d_pos, d_neg, s_pos, s_neg, pm, nm, variant="eq2")
    d_pos2, d_neg2 = d_pos.clone(), d_neg.clone()
    d_pos2[:, 1:] += 5.0
    d_neg2[:, 2:] -= 5.0
    assert contrastive_loss(d_pos2, d_neg2, s_pos, s_neg, pm, nm, variant="eq2").item() == pytest.approx(eq2.item())
    d_pos2[:, 0] += 1.0
    assert contrastive_loss(d_pos2, d_neg2, s_pos, s_neg, pm, nm, variant="eq2").item() < eq2.item()


@pytest.mark.parametrize("variant", LOSS_VARIANTS)
def test_gradients_push_d_up_for_positives_and_down_for_negatives_and_ignore_missing_slots(variant):
    d_pos, d_neg, s_pos, s_neg, pm, nm = hand_made(2)
    s_pos[:, 1:] = s_pos[:, 1:].clamp_min(0.6)   # soft: a positive with prob < 1/2 counts as a negative
    s_neg = s_neg.clamp_max(-0.6)                 # soft: likewise a negative with prob > 1/2
    d_pos.requires_grad_(True)
    d_neg.requires_grad_(True)
    contrastive_loss(d_pos, d_neg, s_pos, s_neg, pm, nm, variant=variant).backward()
    used_pos, used_neg = pm.clone(), nm.clone()
    if variant == "eq2":
        used_pos[:, 1:] = False
        used_neg[:] = False
        used_neg[[0, 1], 0] = True
        used_neg[2, 1] = True
    # gradient descent moves D along -grad: up for positives, down for negatives
    assert (d_pos.grad[used_pos] < 0).all()
    assert (d_neg.grad[used_neg] > 0).all()
    assert (d_pos.grad[~used_pos] == 0).all() and (d_neg.grad[~used_neg] == 0).all()


def test_eq4_scores_shift_the_loss_but_not_its_gradient_while_soft_scores_change_the_gradient():
    d_pos, d_neg, s_pos, s_neg, pm, nm = hand_made(3)
    grads, values = {}, {}
    for name, variant, sp in (("eq4-s", "eq4", s_pos), ("eq4-1", "eq4", torch.ones_like(s_pos)),
                              ("soft-s", "soft", s_pos), ("soft-1", "soft", torch.ones_like(s_pos))):
        d = d_pos.clone().requires_grad_(True)
        loss = contrastive_loss(d, d_neg, sp, s_neg, pm, nm, variant=variant)
        loss.backward()
        grads[name], values[name] = d.grad, loss.item()
    assert torch.allclose(grads["eq4-s"], grads["eq4-1"])
    assert values["eq4-s"] > values["eq4-1"]  # log s+ < 0 adds a constant
    assert not torch.allclose(grads["soft-s"][:, 1:], grads["soft-1"][:, 1:])
    # in eq4 the negative scores do change the gradient: a weaker negative (s- near 0) is pushed less
    d = d_neg.clone().requires_grad_(True)
    contrastive_loss(d_pos, d, s_pos, torch.full_like(s_neg, -0.1), pm, nm).backward()
    weak = d.grad.clone()
    d.grad = None
    contrastive_loss(d_pos, d, s_pos, torch.full_like(s_neg, -1.0), pm, nm).backward()
    assert (weak[nm] < d.grad[nm]).all()


@pytest.mark.parametrize("variant", LOSS_VARIANTS)
def test_extreme_d_and_scores_stay_finite(variant):
    d_pos = torch.tensor([[-300.0, 0.0, 300.0, -80.0, 80.0]], requires_grad=True)
    d_neg = torch.tensor([[300.0, -300.0, 80.0, 0.0]], requires_grad=True)
    s_pos = torch.tensor([[1.0, 0.0, 1e-30, 1.0, 0.5]])     # s+ = 0: floored, not -inf
    s_neg = torch.tensor([[-1.0, -1.0, 0.0, -1e-30]])
    loss = contrastive_loss(d_pos, d_neg, s_pos, s_neg, variant=variant)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(d_pos.grad).all() and torch.isfinite(d_neg.grad).all()
    if variant == "eq4":
        # positives: log s+ + log sig(D), s+ floored; log sig(-300) = -300, log sig(300) = 0
        pos = [-300.0, math.log(S_POS_FLOOR) + math.log(0.5), math.log(S_POS_FLOOR), -80.0, math.log(0.5)]
        # negatives: log(1 + s- sig(D)): log(1 - sig(300)) = -300, log(1 - sig(-300)) = 0, s- = 0 -> 0
        neg = [-300.0, 0.0, 0.0, 0.0]
        expected = -sum(pos) / 5 - sum(neg) / 4
        assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_a_group_without_negatives_or_with_a_zero_weight_negative_adds_nothing_for_them():
    d_pos = torch.tensor([[0.5, 1.0, -1.0]])
    alone = contrastive_loss(d_pos, torch.zeros(1, 2), torch.ones(1, 3), -torch.ones(1, 2),
                             neg_mask=torch.zeros(1, 2, dtype=torch.bool))
    zero_w = contrastive_loss(d_pos, torch.tensor([[4.0, -4.0]]), torch.ones(1, 3), torch.zeros(1, 2))
    expected = -sum(math.log(sig(x)) for x in (0.5, 1.0, -1.0)) / 3
    assert alone.item() == pytest.approx(expected, rel=1e-6)
    assert zero_w.item() == pytest.approx(expected, rel=1e-6)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="eq5"):
        contrastive_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), -torch.ones(1, 1), variant="eq5")
