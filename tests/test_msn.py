"""MSN matcher: shapes and masking, overfitting a tiny set, save/load, resume, metrics, the stage."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cldg.matching.evaluation import candidate_sets, expected_rank_metrics
from cldg.matching.msn import (MSN, MSNConfig, load_msn, pad_batch, pad_grouped, save_msn, score_pairs,
                               truncate_pair)
from cldg.matching.training import MatcherTrainConfig, epoch_batches, train_msn


def tiny_config(**kw) -> MSNConfig:
    base = dict(vocab_size=40, embed_dim=12, hidden=16, max_turns=4, max_turn_len=8, hops=3, gamma=0.3,
                cnn_channels=[4, 4, 4], match_dim=16, gru_hidden=16, dropout=0.0)
    return MSNConfig(**(base | kw))


def random_pairs(n: int, seed: int = 0, vocab: int = 40):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        turns = [rng.integers(5, vocab, size=rng.integers(1, 8)).tolist() for _ in range(rng.integers(1, 5))]
        out.append((turns, rng.integers(5, vocab, size=rng.integers(1, 8)).tolist()))
    return out


@pytest.mark.parametrize("heads", [1, 2])
def test_forward_shapes_and_padding_never_changes_a_score(heads):
    torch.manual_seed(0)
    model = MSN(tiny_config(heads=heads)).eval()
    pairs = random_pairs(6)
    ctx, resp = pad_batch([p[0] for p in pairs], [p[1] for p in pairs])
    with torch.no_grad():
        logits = model(ctx, resp)
        assert logits.shape == (6,) and torch.isfinite(logits).all()
        # more padding everywhere: extra turn slots (left), longer turns, longer responses
        big_ctx = torch.zeros(6, ctx.shape[1] + 2, ctx.shape[2] + 5, dtype=torch.long)
        big_ctx[:, 2:, :ctx.shape[2]] = ctx
        big_resp = torch.zeros(6, resp.shape[1] + 7, dtype=torch.long)
        big_resp[:, :resp.shape[1]] = resp
        torch.testing.assert_close(model(big_ctx, big_resp), logits, atol=1e-5, rtol=1e-5)
        # each pair alone (trimmed to itself) scores what it scores in the batch
        alone = torch.cat([model(*pad_batch([p[0]], [p[1]])) for p in pairs])
        torch.testing.assert_close(alone, logits, atol=1e-5, rtol=1e-5)
        # and the content matters: another response changes the score
        assert not torch.allclose(model(ctx, resp.flip(0)), logits)


def test_shared_contexts_are_encoded_once_with_the_same_scores():
    torch.manual_seed(1)
    model = MSN(tiny_config(heads=2)).eval()
    base = random_pairs(3, seed=5)
    responses = random_pairs(12, seed=6)
    pairs = [(base[i % 3][0], responses[i][1]) for i in range(12)]  # 3 contexts x 4 candidates each
    ctx, resp, index = pad_grouped([p[0] for p in pairs], [p[1] for p in pairs])
    assert ctx.shape[0] == 3 and index.tolist() == [0, 1, 2] * 4
    with torch.no_grad():
        grouped = model(ctx, resp, index)
        one_per_pair = model(*pad_batch([p[0] for p in pairs], [p[1] for p in pairs]))
    torch.testing.assert_close(grouped, one_per_pair, atol=1e-5, rtol=1e-5)
    # score_pairs (grouping + length sorting + batches of 5) puts every score back in its place
    np.testing.assert_allclose(score_pairs(model, pairs, 5, "cpu"), torch.sigmoid(one_per_pair).numpy(), atol=1e-6)


def test_full_bilinear_forms_and_selector_drops_turns_below_gamma():
    model = MSN(tiny_config(gamma=1.01))  # sigmoid < 1.01 always: every turn dropped
    assert model.bilinear[0].A.shape == (16, 16)
    pairs = random_pairs(4, seed=3)
    ctx, resp = pad_batch([p[0] for p in pairs], [p[1] for p in pairs])
    d = model.embed_words(ctx)
    w = model.select(d, ctx != 0, (ctx != 0).any(-1))
    assert (w == 0).all()
    keep = MSN(tiny_config(gamma=0.0))
    w2 = keep.select(keep.embed_words(ctx), ctx != 0, (ctx != 0).any(-1))
    assert ((w2 > 0) == (ctx != 0).any(-1)).all()  # every real turn kept, empty slots 0


def test_truncation_keeps_last_turns_and_marks_empty_utterances():
    turns, resp = truncate_pair([[5], [], [6, 7, 8, 9]], [], max_turns=2, max_turn_len=3)
    assert turns == [[1], [6, 7, 8]] and resp == [1]
    assert truncate_pair([[5, 6, 7]], [8, 9, 10, 11], 3, 2, max_response_len=3) == ([[5, 6]], [8, 9, 10])


def test_expected_rank_metrics_and_candidate_sets():
    perfect = np.array([[1.0] + [0.0] * 9] * 3)
    assert expected_rank_metrics(perfect) == {"R10@1": 1.0, "R10@2": 1.0, "R10@5": 1.0, "MRR": 1.0}
    ties = np.zeros((2, 10))  # all equal: chance level, exactly
    m = expected_rank_metrics(ties)
    assert m["R10@1"] == pytest.approx(0.1) and m["R10@5"] == pytest.approx(0.5)
    assert m["MRR"] == pytest.approx(np.mean(1 / np.arange(1, 11)))
    third = np.array([[0.5, 0.9, 0.8] + [0.1] * 7])
    assert expected_rank_metrics(third) == {"R10@1": 0.0, "R10@2": 0.0, "R10@5": 1.0, "MRR": pytest.approx(1 / 3)}
    responses = [f"r{i % 15}" for i in range(30)]
    sets = candidate_sets(responses, 9, seed=4)
    assert sets.shape == (30, 10) and (sets[:, 0] == np.arange(30)).all()
    for row in sets:
        assert len(set(row)) == 10 and all(responses[j] != responses[row[0]] for j in row[1:])
    np.testing.assert_array_equal(sets, candidate_sets(responses, 9, seed=4))


def _learnable_pairs(n: int):
    """Response i shares its topic word with the context: learnable, with 9 same-shaped negatives."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        topic = 10 + i
        out.append(([[5, 6, topic, 7], [8, topic]], [topic, 9, int(rng.integers(5, 9))]))
    return out


def test_tiny_model_overfits_tiny_set_and_save_load_scores_identically(tmp_path):
    torch.manual_seed(0)
    pairs = _learnable_pairs(20)
    model = MSN(tiny_config(vocab_size=40))
    sets = candidate_sets([str(p[1]) for p in pairs], 9, seed=0)
    cfg = MatcherTrainConfig(lr=3e-3, batch_size=10, neg_ratio=3, epochs=60, eval_every=20, patience=50, seed=0)
    summary = train_msn(model, pairs, [str(p[1]) for p in pairs], pairs, sets, cfg, tmp_path / "run",
                        torch.device("cpu"))
    assert summary["last_valid"]["R10@1"] == 1.0 or 1 - summary["best_criterion"] == pytest.approx(1.0)
    scores = score_pairs(model, [(pairs[r[0]][0], pairs[j][1]) for r in sets for j in r], 7, "cpu")
    assert expected_rank_metrics(scores.reshape(len(sets), 10))["R10@1"] == 1.0

    save_msn(tmp_path / "art", model)
    meta = json.loads((tmp_path / "art" / "model.json").read_text())
    assert meta["name"] == "msn" and meta["config"]["hidden"] == 16
    loaded = load_msn(tmp_path / "art")
    cands = [(pairs[r[0]][0], pairs[j][1]) for r in sets for j in r]
    np.testing.assert_array_equal(score_pairs(loaded, cands, 7, "cpu"), scores)  # bit-identical
    np.testing.assert_allclose(score_pairs(loaded, cands, 64, "cpu"), scores, atol=1e-6)  # batching: rounding only


def test_batches_are_deterministic_and_negatives_differ_from_truth():
    pairs = random_pairs(25)
    keys = [str(p[1]) for p in pairs]
    a = list(epoch_batches(pairs, keys, 8, 2, seed=1, epoch=0))
    b = list(epoch_batches(pairs, keys, 8, 2, seed=1, epoch=0, start=2))
    assert len(a) == 4 and len(b) == 2
    torch.testing.assert_close(a[2].context, b[0].context)
    torch.testing.assert_close(a[3].response, b[1].response)
    assert a[0].labels.tolist() == [1.0] * 8 + [0.0] * 16
    assert a[0].context.shape[0] == 8 and a[0].context_index.tolist() == list(range(8)) * 3  # contexts once
    assert not torch.equal(a[0].context, list(epoch_batches(pairs, keys, 8, 2, seed=1, epoch=1))[0].context)


def test_resume_after_crash_continues_from_last_checkpoint(tmp_path):
    pairs = random_pairs(24, seed=2)
    keys = [str(p[1]) for p in pairs]
    sets = candidate_sets(keys, 9, seed=0)
    cfg = MatcherTrainConfig(lr=1e-3, batch_size=6, epochs=3, eval_every=3, patience=99, seed=5)

    def fresh():
        torch.manual_seed(0)
        return MSN(tiny_config(dropout=0.1))

    straight = fresh()
    s1 = train_msn(straight, pairs, keys, pairs, sets, cfg, tmp_path / "a", torch.device("cpu"))
    assert s1["steps"] == 12

    crashed = fresh()
    seen = []

    def crash_at_8(step):
        seen.append(step)
        if step == 8:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train_msn(crashed, pairs, keys, pairs, sets, cfg, tmp_path / "b", torch.device("cpu"), on_step=crash_at_8)
    seen.clear()
    resumed = fresh()
    s2 = train_msn(resumed, pairs, keys, pairs, sets, cfg, tmp_path / "b", torch.device("cpu"), on_step=seen.append)
    assert seen[0] == 7 and s2["steps"] == 12  # checkpoint at step 6; steps 7..12 are redone, not 1..12
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, msg=f"{name} differs after resume")


def test_train_matcher_stage_writes_artifact_with_baselines(prepared_workdir):
    from cldg.config import CommonOptions
    from cldg.matching.msn import load_msn_matcher
    from cldg.stages import train_matcher

    workdir, _ = prepared_workdir
    cfg = train_matcher.Config(hidden=16, max_turn_len=12, heads=2, cnn_channels=4, match_dim=16, gru_hidden=16,
                               batch_size=16, epochs=1, max_steps=6, eval_every=3, max_valid_pairs=20)
    art = train_matcher.run(cfg, CommonOptions(workdir=workdir, seed=1, device="cpu"))
    assert art.stage == "matcher"
    for name in ("model.safetensors", "model.json", "metrics.json", "tokenizer.json"):
        assert art.file(name).is_file()
    assert not any(p.name.startswith("resume") for p in art.path.iterdir())
    metrics = json.loads(art.file("metrics.json").read_text())
    assert set(metrics["validation"]) == {"msn", "bm25", "bow"}
    for m in metrics["validation"].values():
        assert 0.0 <= m["R10@1"] <= m["R10@2"] <= m["R10@5"] <= 1.0 and 0.1 <= m["MRR"] <= 1.0
    assert art.manifest["rows"]["steps"] == 6
    matcher = load_msn_matcher(art.path, "cpu", batch_size=4)
    probs = matcher.score([["how is the weather today ?"], ["do you have any pets ?"], []],
                          ["lots of rain here today", "my dog is called max", "hello"])
    assert probs.shape == (3,) and probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    # rerun: same fingerprint, skipped
    again = train_matcher.run(cfg, CommonOptions(workdir=workdir, seed=1, device="cpu"))
    assert again.path == art.path


def test_bad_sizes_are_one_clear_error(prepared_workdir):
    from cldg.config import CommonOptions
    from cldg.errors import CldgError
    from cldg.stages import train_matcher

    common = CommonOptions(workdir=prepared_workdir[0], device="cpu")
    with pytest.raises(CldgError, match="--heads 3: the model width 16"):
        train_matcher.run(train_matcher.Config(hidden=16, heads=3, max_steps=1), common)
    with pytest.raises(CldgError, match="--cnn-channels 0"):
        train_matcher.run(train_matcher.Config(cnn_channels=0), common)
