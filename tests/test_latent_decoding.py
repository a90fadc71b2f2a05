"""Latent models (CVAE, DialogWAE) draw each context's z from that context's own generator when the decoder has row
seeds (evaluate's, keyed by pair id): a context's response then does not depend on its batch, the batch order or
the batches before it (`evaluate --batch-size` is not in the evaluation's fingerprint), whatever the method."""
from __future__ import annotations

import pytest
import torch

from cldg.data.batching import Limits, collate_ids
from cldg.decoding.search import DecodeConfig, generate

V = 30


def tiny_cvae():
    from cldg.models import build_model

    torch.manual_seed(0)
    model = build_model("cvae", V, embedding_dim=8, utterance_size=6, context_size=8, decoder_size=8, latent_size=4,
                        prior_hidden=8, bow_hidden=8)
    with torch.no_grad():  # a wide prior, so that z decides the response
        model.prior_net[-1].bias[4:] = 6.0
        model.init_state.weight.mul_(4.0)
    return model


def tiny_wae():
    from cldg.models import build_model

    torch.manual_seed(0)
    model = build_model("dialogwae", V, embedding_dim=8, utterance_size=6, context_size=8, latent_size=4, components=3,
                        critic_hidden=12, dropout=0.0)
    with torch.no_grad():  # a wide prior and a flat mixture, so that both the component and e decide the response
        model.prior_logvar.bias.fill_(6.0)
        model.prior_pi[-1].weight.zero_()
        model.prior_pi[-1].bias.zero_()
        model.prior_mu.weight.mul_(5.0)
        model.decoder.weight_hh_l0.mul_(3.0)
    return model


MODELS = {"cvae": tiny_cvae, "dialogwae": tiny_wae}
METHODS = {"greedy": {}, "beam": {"beam_size": 3}, "nucleus": {"top_p": 0.9}}


def contexts(n: int = 8) -> list[tuple[list[int], list[list[int]]]]:
    """n two-turn contexts of different lengths (flat context, turns)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        turns = [torch.randint(5, V, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(2)]
        out.append((turns[0] + [3] + turns[1], turns))
    return out


def decode(model, ctxs, seeds, cfg):
    torch.manual_seed(0)  # the global RNG starts alike in every call: only the row seeds may tell rows apart
    return generate(model, collate_ids(ctxs, None, Limits()), cfg, row_seeds=seeds)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_a_contexts_response_does_not_depend_on_its_batch_or_the_batch_order(name, method):
    model = MODELS[name]()
    cfg = DecodeConfig(method=method, max_len=8, **METHODS[method])
    ctxs = contexts()
    seeds = [1000 + 17 * i for i in range(len(ctxs))]
    whole = decode(model, ctxs, seeds, cfg)
    halves = decode(model, ctxs[:4], seeds[:4], cfg) + decode(model, ctxs[4:], seeds[4:], cfg)
    assert halves == whole
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    permuted = decode(model, [ctxs[i] for i in perm], [seeds[i] for i in perm], cfg)
    assert permuted == [whole[i] for i in perm]
    # the responses are the latent's: other row seeds give other responses
    assert decode(model, ctxs, [s + 1 for s in seeds], cfg) != whole


@pytest.mark.parametrize("name", MODELS)
def test_the_same_context_with_different_row_seeds_gets_different_responses(name):
    model = MODELS[name]()
    cfg = DecodeConfig(method="greedy", max_len=8)
    ctx = contexts(1)
    outs = decode(model, ctx * 8, list(range(8)), cfg)
    assert len({tuple(o) for o in outs}) > 1
    assert [decode(model, ctx, [s], cfg)[0] for s in range(8)] == outs  # alone, each row as in the batch


@pytest.mark.parametrize("name", MODELS)
def test_without_row_seeds_the_latent_comes_from_the_global_rng(name):
    model = MODELS[name]()
    batch = collate_ids(contexts(), None, Limits())
    with torch.inference_mode():
        torch.manual_seed(3)
        a = model.init_decoding(batch)["hidden"]
        torch.manual_seed(3)
        b = model.init_decoding(batch)["hidden"]
        c = model.init_decoding(batch)["hidden"]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_row_seeded_mixture_samples_pick_components_at_softmax_frequencies_and_rows_do_not_share_noise():
    from cldg.models.dialogwae import mixture_sample

    B, K, Z = 6000, 3, 4
    probs = torch.tensor([0.2, 0.3, 0.5])
    mu = torch.arange(K, dtype=torch.float).view(1, K, 1).expand(B, K, Z) * 10
    logvar = torch.zeros(B, K, Z)
    pi = probs.log().expand(B, K).clone().requires_grad_(True)
    gens = [torch.Generator().manual_seed(s) for s in range(B)]
    e, choice = mixture_sample(pi, mu, logvar, 0.1, row_generators=gens)
    assert torch.equal(choice.detach().sum(-1), torch.ones(B)) and set(choice.detach().unique().tolist()) == {0.0, 1.0}
    assert choice.detach().mean(0).tolist() == pytest.approx(probs.tolist(), abs=0.025)  # Gumbel-max
    # e is the chosen component's mean plus unit noise
    noise = e.detach() - (choice.detach().argmax(-1).float() * 10).unsqueeze(1)
    assert noise.mean().item() == pytest.approx(0.0, abs=0.05) and noise.std().item() == pytest.approx(1.0, abs=0.05)
    e.sum().backward()  # the straight-through gradient still reaches the mixture weights
    assert pi.grad is not None and pi.grad.abs().sum() > 0
    # row b's sample is the same alone: its Gumbel and Gaussian noise come from its own generator only
    for b in (0, 17, 5999):
        e1, c1 = mixture_sample(pi[b:b + 1].detach(), mu[b:b + 1], logvar[b:b + 1], 0.1,
                                row_generators=[torch.Generator().manual_seed(b)])
        assert torch.equal(c1[0], choice[b].detach()) and torch.allclose(e1[0], e[b].detach())


def mixed_contexts(n: int = 8) -> list[tuple[list[int], list[list[int]]]]:
    """n contexts of one to three turns of different lengths."""
    g = torch.Generator().manual_seed(11)
    out = []
    for i in range(n):
        turns = [torch.randint(5, V, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(1 + i % 3)]
        flat = [t for turn in turns for t in turn + [3]][:-1]
        out.append((flat, turns))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_the_context_code_skips_the_turn_slots_that_pad_the_batch(name):
    """Turn slots are left-padded to the batch's most turns: c must not see them (they made a one-turn context's
    response depend on whether its batch held a three-turn one)."""
    model = MODELS[name]().eval()
    ctxs = mixed_contexts()
    with torch.inference_mode():
        together = model.encode_context(collate_ids(ctxs, None, Limits()))
        alone = torch.cat([model.encode_context(collate_ids([c], None, Limits())) for c in ctxs])
    assert torch.allclose(together, alone, atol=1e-6)
    cfg = DecodeConfig(method="greedy", max_len=8)
    seeds = [50 + i for i in range(len(ctxs))]
    whole = decode(model, ctxs, seeds, cfg)
    assert [decode(model, [c], [s], cfg)[0] for c, s in zip(ctxs, seeds)] == whole
    assert decode(model, ctxs[:4], seeds[:4], cfg) + decode(model, ctxs[4:], seeds[4:], cfg) == whole
