"""Group-wise contrastive fine-tuning: groups from the long-format samples (and every ablation flag),
the flat group batch, the one-time reference cache, and `cldg contrastive-train` end to end."""
from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

from cldg.artifacts import ArtifactStore
from cldg.config import CommonOptions
from cldg.errors import CldgError
from cldg.training.groups import GroupOptions, TextIndex, build_groups, make_group_batch

COLUMNS = ("split", "pair_id", "side", "polarity", "rank", "cand_pair_id", "matcher_prob", "weight")


def sample_rows(split: str, pid: int, k: int, cands: dict[tuple[str, str], list[int]]) -> list[tuple]:
    """Long-format rows of one pair: cands[(side, polarity)] = candidate pair ids in rank order."""
    rows = []
    for (side, pol), ids in cands.items():
        for rank, cand in enumerate(ids[:k]):
            prob = 0.9 - 0.1 * rank if pol == "pos" else 0.05 * (rank + 1)
            rows.append((split, pid, side, pol, rank, cand, prob, prob if pol == "pos" else prob - 1.0))
    return rows


def columns(rows: list[tuple]) -> dict[str, list]:
    return {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}


def write_shards(directory, rows: list[tuple], n: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = (pa.string(), pa.int64(), pa.string(), pa.string(), pa.int16(), pa.int64(), pa.float32(), pa.float32())
    for i in range(n):
        part = rows[i::n]
        pq.write_table(pa.table({c: pa.array([r[j] for r in part], t) for j, (c, t) in enumerate(zip(COLUMNS, types))}),
                       directory / f"shard-{i:05d}-of-{n:05d}.parquet")


# pair 10 (train) and 20 (valid), mined with k = 2; candidates are train pair ids
CANDS = {("response", "pos"): [1, 2], ("response", "neg"): [3, 4], ("context", "pos"): [5, 6],
         ("context", "neg"): [7, 8]}
TABLE_ROWS = sample_rows("train", 10, 2, CANDS) + sample_rows("valid", 20, 2, CANDS)


def slots(groups, g: int = 0):
    """(positives, negatives) of group g as lists of ((context id, response id), weight), empty slots left out."""
    pos = [((int(c), int(r)), round(float(w), 4)) for c, r, w in
           zip(groups.pos_ctx[g], groups.pos_resp[g], groups.pos_w[g]) if c >= 0]
    neg = [((int(c), int(r)), round(float(w), 4)) for c, r, w in
           zip(groups.neg_ctx[g], groups.neg_resp[g], groups.neg_w[g]) if c >= 0]
    return pos, neg


def test_groups_from_parquet_shards_hold_the_pair_2k_positives_and_2k_negatives(tmp_path):
    from cldg.retrieval.mining import read_samples

    write_shards(tmp_path, TABLE_ROWS)
    table = read_samples(tmp_path)
    train, valid = build_groups(table, "train", GroupOptions(k=2)), build_groups(table, "valid", GroupOptions(k=2))
    assert train.pair_ids.tolist() == [10] and valid.pair_ids.tolist() == [20]
    pos, neg = slots(train)
    # the pair itself (s+ = 1), (c, r+) best first, (c+, r) best first
    assert pos == [((10, 10), 1.0), ((10, 1), 0.9), ((10, 2), 0.8), ((5, 10), 0.9), ((6, 10), 0.8)]
    # (c, r-) worst first, then (c-, r): s- = prob - 1
    assert neg == [((10, 3), -0.95), ((10, 4), -0.9), ((7, 20 - 10), -0.95), ((8, 10), -0.9)]
    vpos, vneg = slots(valid)
    assert vpos[0] == ((20, 20), 1.0) and ((20, 1), 0.9) in vpos and ((5, 20), 0.9) in vpos


ABLATIONS = {
    # flag: (positives, negatives) of pair 10 as sets of (context id, response id)
    "k1": (GroupOptions(k=1), {(10, 10), (10, 1), (5, 10)}, {(10, 3), (7, 10)}),
    "no_positive_group": (GroupOptions(k=2, no_positive_group=True), {(10, 10)},
                          {(10, 3), (10, 4), (7, 10), (8, 10)}),
    "no_negative_group": (GroupOptions(k=2, no_negative_group=True),
                          {(10, 10), (10, 1), (10, 2), (5, 10), (6, 10)}, {(10, 3)}),
    "no_group": (GroupOptions(k=2, no_group=True), {(10, 10)}, {(10, 3)}),
    "response_side_only": (GroupOptions(k=2, response_side_only=True), {(10, 10), (10, 1), (10, 2)},
                           {(10, 3), (10, 4)}),
    "context_side_only": (GroupOptions(k=2, context_side_only=True), {(10, 10), (5, 10), (6, 10)},
                          {(7, 10), (8, 10)}),
}


@pytest.mark.parametrize("flag", sorted(ABLATIONS))
def test_each_ablation_flag_changes_which_sequences_enter_the_loss_as_stated(flag):
    opts, want_pos, want_neg = ABLATIONS[flag]
    pos, neg = slots(build_groups(columns(TABLE_ROWS), "train", opts))
    assert {s for s, _ in pos} == want_pos and {s for s, _ in neg} == want_neg
    assert pos[0] == ((10, 10), 1.0)  # the pair itself is always the first positive


def test_no_matching_scores_keeps_the_sequences_but_sets_every_score_to_plus_or_minus_one():
    pos, neg = slots(build_groups(columns(TABLE_ROWS), "train", GroupOptions(k=2, no_matching_scores=True)))
    base_pos, base_neg = slots(build_groups(columns(TABLE_ROWS), "train", GroupOptions(k=2)))
    assert [s for s, _ in pos] == [s for s, _ in base_pos] and [s for s, _ in neg] == [s for s, _ in base_neg]
    assert {w for _, w in pos} == {1.0} and {w for _, w in neg} == {-1.0}


def test_short_groups_are_masked_and_bad_flags_or_rows_are_one_clear_error():
    short = sample_rows("train", 10, 2, {("response", "pos"): [1], ("response", "neg"): [3], ("context", "pos"): [],
                                         ("context", "neg"): [7, 8]})
    pos, neg = slots(build_groups(columns(short), "train", GroupOptions(k=2)))
    assert [s for s, _ in pos] == [(10, 10), (10, 1)] and [s for s, _ in neg] == [(10, 3), (7, 10), (8, 10)]
    with pytest.raises(CldgError, match="exclude each other"):
        GroupOptions(k=2, response_side_only=True, context_side_only=True)
    with pytest.raises(CldgError, match="--k 0"):
        GroupOptions(k=0)
    bad = list(TABLE_ROWS)
    bad[0] = ("train", 10, "middle") + bad[0][3:]
    with pytest.raises(CldgError, match="mine-samples"):
        build_groups(columns(bad), "train", GroupOptions(k=2))


# -- with real data: the tiny corpus, a tiny reference, hand-mined samples ----------------------------

def hand_mined_rows(prepared, k: int, seed: int = 0) -> list[tuple]:
    """Dual samples for every train and valid pair, the way a good matcher would pick them on the tiny
    corpus: positives from dialogues on the same topic, negatives from other topics (the mining itself
    is tested with mine-samples; this stage only needs the long format)."""
    from fixtures_data import TOPICS

    from cldg.data.pairs import read_pairs

    def topic(dialogue_id: str) -> int:  # fixtures_data.make_dialogues: dialogue "d{i}" is on topic i % 6
        return int(dialogue_id[1:]) % len(TOPICS)

    rng = random.Random(seed)
    train = read_pairs(prepared.file("pairs-train.parquet"))
    train_topic = dict(zip(train.pair_id, map(topic, train.dialogue_id)))
    rows = []
    for split in ("train", "valid"):
        t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
        for pid, dialogue in zip(t.pair_id, t.dialogue_id):
            same = [i for i, tp in train_topic.items() if tp == topic(dialogue) and i != pid]
            other = [i for i, tp in train_topic.items() if tp != topic(dialogue)]
            pos, neg = rng.sample(same, 2 * k), rng.sample(other, 2 * k)
            cands = {("response", "pos"): pos[:k], ("response", "neg"): neg[:k],
                     ("context", "pos"): pos[k:], ("context", "neg"): neg[k:]}
            rows += sample_rows(split, pid, k, cands)
    return rows


@pytest.fixture(scope="module")
def inputs(prepared_workdir, tmp_path_factory):
    """(workdir, prepare, reference, samples): a copy of the prepared workdir, a tiny seq2seq reference
    (no dropout, so that the target starts exactly at the reference) and samples mined by hand with k = 2."""
    from cldg.stages import pretrain

    src, _ = prepared_workdir
    workdir = tmp_path_factory.mktemp("contrastive") / "work"
    shutil.copytree(src, workdir, symlinks=True)
    store = ArtifactStore(workdir)
    prepared = store.latest("prepare")
    common = CommonOptions(workdir=workdir, seed=2, device="cpu")
    reference = pretrain.run(pretrain.Config(model="seq2seq", embedding_dim=16, hidden_size=16, num_layers=1,
                                             dropout=0.0, batch_size=16, max_steps=12, evals_per_epoch=1), common)
    with store.begin("samples", 1, {"matcher": "hand", "k": 2}, {"prepare": prepared}) as run:
        write_shards(run.dir, hand_mined_rows(prepared, 2), n=2)
        samples = run.commit(extra={"k": 2, "matcher": "hand"})
    return workdir, prepared, reference, samples


def text_index(prepared, reference):
    from cldg.data.batching import Limits
    from cldg.data.pairs import read_pairs
    from cldg.text.tokenizer import DialogueTokenizer

    c = reference.config
    limits = Limits(c["max_context_turns"], c["max_turn_len"], c["max_context_len"], c["max_response_len"])
    contexts, responses = {}, {}
    for split in ("train", "valid"):
        t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
        contexts.update(zip(t.pair_id, t.context))
        responses.update(zip(t.pair_id, t.response))
    return TextIndex(DialogueTokenizer.load(prepared.file("tokenizer.json")), limits, contexts, responses)


def test_group_batch_scores_each_distinct_sequence_once_and_maps_every_slot_back(inputs):
    from cldg.retrieval.mining import read_samples

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), "train", GroupOptions(k=2))
    rows = [0, 1, 2, 3]
    seqs_of = [s for g in rows for s in slots(groups, g)[0] + slots(groups, g)[1]]
    distinct = {s for s, _ in seqs_of}
    fake_ref = {s: float(hash(s) % 1000) for s in groups.sequences()}
    gb = make_group_batch(groups, rows, text, fake_ref)
    assert gb.seqs.size == len(distinct) and gb.pos_index.shape == (4, 5) and gb.neg_index.shape == (4, 4)
    for index, mask, ctx, resp in ((gb.pos_index, gb.pos_mask, groups.pos_ctx, groups.pos_resp),
                                   (gb.neg_index, gb.neg_mask, groups.neg_ctx, groups.neg_resp)):
        for g, row in enumerate(rows):
            for j in range(index.size(1)):
                assert bool(mask[g, j]) == (ctx[row, j] >= 0)
                if mask[g, j]:
                    flat = int(index[g, j])
                    want = text.batch([(int(ctx[row, j]), int(resp[row, j]))])
                    n = int(want.response_out.ne(0).sum())
                    assert gb.seqs.response_out[flat, :n].tolist() == want.response_out[0, :n].tolist()
                    assert gb.ref_logp[flat].item() == fake_ref[(int(ctx[row, j]), int(resp[row, j]))]
    assert gb.self_index.tolist() == gb.pos_index[:, 0].tolist()


def test_reference_cache_equals_a_fresh_reference_forward_and_d_is_zero_when_target_is_reference(inputs, tmp_path,
                                                                                                  monkeypatch):
    import cldg.training.reference_cache as refcache
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.stages.contrastive import build_reference_cache  # the stage makes the refcache artifact
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import contrastive_loss, sequence_logprob

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    table = read_samples(samples.path)
    groups = build_groups(table, "train", GroupOptions(k=2))
    seqs = groups.sequences() | build_groups(table, "valid", GroupOptions(k=2)).sequences()
    store = ArtifactStore(tmp_path)
    ref = load_model(reference.path, "cpu")
    cache = build_reference_cache(store, reference, samples, {"max_response_len": 40}, ref, text, seqs,
                                  batch_size=32, device=torch.device("cpu"))
    assert cache.path.parent.name == "refcache" and cache.manifest["rows"]["sequences"] == len(seqs)
    assert set(cache.manifest["inputs"]) == {"reference", "samples"}
    assert not any(p.name.startswith("logprobs") for p in samples.path.iterdir())  # not written into samples
    logp = refcache.load_reference_cache(cache)
    assert set(logp) == seqs

    # a fresh forward, one sequence at a time (no padding at all), gives the cached numbers
    for s in sorted(seqs)[:12]:
        b = text.batch([s])
        with torch.no_grad():
            fresh = sequence_logprob(ref(b), b.response_out, PAD).item()
        assert logp[s] == pytest.approx(fresh, abs=1e-4)

    # a target equal to the reference: D = 0 for every sequence of every group, so eq3 = 2 log 2
    target = load_model(reference.path, "cpu")
    target.train()  # no dropout in this model: train mode changes nothing
    gb = make_group_batch(groups, list(range(len(groups))), text, logp)
    with torch.no_grad():
        d = sequence_logprob(target(gb.seqs), gb.seqs.response_out, PAD) - gb.ref_logp
    assert d.abs().max().item() < 1e-4
    full = gb.pos_mask.all(-1) & gb.neg_mask.all(-1)
    loss = contrastive_loss(d[gb.pos_index][full], d[gb.neg_index][full], gb.s_pos[full], gb.s_neg[full],
                            variant="eq3")
    assert loss.item() == pytest.approx(2 * np.log(2), abs=1e-4)

    # computed once: asking again finds the artifact and never runs the reference
    def never(*a, **kw):
        raise AssertionError("the reference ran again")

    monkeypatch.setattr(refcache, "sequence_logprobs", never)
    again = build_reference_cache(store, reference, samples, {"max_response_len": 40}, ref, text, seqs,
                                  batch_size=32, device=torch.device("cpu"))
    assert again.path == cache.path
    # but a cache computed in fp32 does not serve a bf16 (CUDA) run: its fingerprint names the precision
    assert cache.manifest["config"]["precision"] == "fp32"
    with pytest.raises(AssertionError, match="ran again"):
        build_reference_cache(store, reference, samples, {"max_response_len": 40}, ref, text, seqs,
                              batch_size=32, device=torch.device("cuda"))


def test_an_interrupted_reference_cache_resumes_at_its_last_saved_chunk_bit_for_bit(inputs, tmp_path, monkeypatch):
    import cldg.training.reference_cache as refcache
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.stages.contrastive import build_reference_cache

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    seqs = build_groups(read_samples(samples.path), "train", GroupOptions(k=2)).sequences()
    ref = load_model(reference.path, "cpu")
    cpu = torch.device("cpu")
    whole = dict(zip(sorted(seqs), refcache.sequence_logprobs(ref, text, sorted(seqs), 4, cpu)))
    n_chunks = math.ceil(len(seqs) / (4 * 2))
    assert n_chunks >= 4

    real = refcache._ordered_logprobs
    computed = []

    def dies_at_third_chunk(*args, **kw):
        if len(computed) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third chunk runs
        computed.append(len(args[2]))
        return real(*args, **kw)

    monkeypatch.setattr(refcache, "_ordered_logprobs", dies_at_third_chunk)
    monkeypatch.setattr(refcache, "CHUNK_BATCHES", 2)
    store = ArtifactStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        build_reference_cache(store, reference, samples, {}, ref, text, seqs, batch_size=4, device=cpu)
    partial = next((tmp_path / "refcache").glob("*.partial"))
    assert len(list(partial.rglob("*.npy"))) == 2  # the two finished chunks, nothing of the third

    computed.clear()
    monkeypatch.setattr(refcache, "_ordered_logprobs", lambda *a, **kw: computed.append(len(a[2])) or real(*a, **kw))
    cache = build_reference_cache(store, reference, samples, {}, ref, text, seqs, batch_size=4, device=cpu)
    assert len(computed) == n_chunks - 2  # only what was not saved ran again
    assert refcache.load_reference_cache(cache) == pytest.approx(whole, abs=0)  # float32 on disk, both ways
    assert not any(p.name.startswith("resume") for p in cache.path.iterdir())  # resume state is not published


def mean_d(model_dir, reference, prepared, samples, split="train"):
    """Mean D over the positive and the negative slots of a split's groups, target in eval mode."""
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob

    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), split, GroupOptions(k=2))
    gb = make_group_batch(groups, list(range(len(groups))), text, None)
    with torch.no_grad():
        d = (sequence_logprob(load_model(model_dir, "cpu")(gb.seqs), gb.seqs.response_out, PAD)
             - sequence_logprob(load_model(reference.path, "cpu")(gb.seqs), gb.seqs.response_out, PAD))
    return d[gb.pos_index][gb.pos_mask].mean().item(), d[gb.neg_index][gb.neg_mask].mean().item()


def test_contrastive_train_end_to_end_separates_positives_from_negatives(inputs, monkeypatch):
    import cldg.training.reference_cache as refcache
    from cldg.stages import contrastive

    workdir, prepared, reference, samples = inputs
    common = CommonOptions(workdir=workdir, seed=3, device="cpu")
    cfg = contrastive.Config(k=2, lr=1e-2, batch_size=8, epochs=4, max_steps=100, evals_per_epoch=1)
    art = contrastive.run(cfg, common)
    assert art.stage == "contrastive"
    for name in ("model.safetensors", "model.json", "train-log.jsonl", "metrics.json"):
        assert art.file(name).is_file(), name
    assert set(art.manifest["inputs"]) == {"prepare", "reference", "samples"}
    assert art.manifest["inputs"]["prepare"]["fingerprint"] == prepared.fingerprint
    assert not any(p.name.startswith("resume") for p in art.path.iterdir())
    log = [json.loads(line) for line in art.file("train-log.jsonl").read_text().splitlines()]
    valid = [r for r in log if r["type"] == "valid"]
    assert valid and all(r["criterion"] == pytest.approx(r["contrastive"] + 0.5 * r["nll"]) for r in valid)
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["loss"] == "eq4" and metrics["best_valid_criterion"] == min(r["criterion"] for r in valid)

    # the trained target gives the positives higher and the negatives lower probability than the reference,
    # also on the valid pairs it never trained on
    # (measured: about +3 / -4.5 on train, +2.7 / -4 on the held-out valid pairs)
    for split in ("train", "valid"):
        d_pos, d_neg = mean_d(art.path, reference, prepared, samples, split)
        assert d_pos > 0.5 and d_neg < -0.5, (split, d_pos, d_neg)

    # same config again: skipped; an ablation: trains again but reuses the reference cache, never the reference
    assert contrastive.run(cfg, common).path == art.path
    monkeypatch.setattr(refcache, "sequence_logprobs", lambda *a, **kw: pytest.fail("the reference ran again"))
    ablation = contrastive.run(contrastive.Config(k=1, no_positive_group=True, loss="eq3", max_steps=3, batch_size=8,
                                                  evals_per_epoch=1, from_scratch=True, mle_warmup_steps=2), common)
    assert ablation.path != art.path and ablation.manifest["refcache"] == art.manifest["refcache"]
    first = json.loads(ablation.file("train-log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and "contrastive" not in first and "nll" in first  # the MLE warm-up step
    from safetensors.torch import load_file  # --from-scratch: 3 steps at lr 1e-4 from a fresh init, far from the reference
    ref_w, scratch_w = (load_file(str(a.path / "model.safetensors")) for a in (reference, ablation))
    assert (ref_w["embedding.weight"] - scratch_w["embedding.weight"]).abs().max() > 0.01
    assert len([p for p in (workdir / "refcache").iterdir() if not p.name.startswith(".") and p.name != "latest"]) == 1


def test_missing_or_mismatched_inputs_are_one_clear_line(inputs, tmp_path):
    from cldg.stages import contrastive

    workdir, *_ = inputs
    with pytest.raises(CldgError, match="pretrain"):
        contrastive.run(contrastive.Config(), CommonOptions(workdir=tmp_path, device="cpu"))
    with pytest.raises(CldgError, match="k = 2"):
        contrastive.run(contrastive.Config(k=3), CommonOptions(workdir=workdir, device="cpu"))


def test_group_loss_adds_the_mle_term_of_the_pairs_themselves_and_warm_up_is_that_term_alone(inputs):
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.text.tokenizer import PAD
    from cldg.training.groups import contrastive_group_loss
    from cldg.training.losses import nll_loss

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), "train", GroupOptions(k=2))
    gb = make_group_batch(groups, [0, 1, 2], text, None)
    model = load_model(reference.path, "cpu")
    with torch.no_grad():
        plain, info = contrastive_group_loss(model, gb, "eq4")
        mixed, _ = contrastive_group_loss(model, gb, "eq4", mle_weight=0.5)
        warm, _ = contrastive_group_loss(model, gb, "eq4", mle_only=True)
        own = gb.seqs.select(gb.self_index)
        nll = nll_loss(model(own), own.response_out, PAD)[0].item()
    assert warm.item() == pytest.approx(nll, rel=1e-5) and info["nll"] == pytest.approx(nll, rel=1e-5)
    assert mixed.item() == pytest.approx(plain.item() + 0.5 * nll, rel=1e-5)


def test_group_loss_of_a_group_forward_model_equals_the_plain_full_batch_computation(inputs):
    """contrastive_group_loss scores real tokens only and encodes shared contexts once: its D and NLL (and so the
    loss and its gradient) are those of the plain computation over the whole padded batch."""
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.text.tokenizer import PAD
    from cldg.training.groups import contrastive_group_loss
    from cldg.training.losses import contrastive_loss, nll_loss, sequence_logprob

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), "train", GroupOptions(k=2))
    gb = make_group_batch(groups, [0, 1, 2, 3], text, {s: -30.0 + (hash(s) % 7) for s in groups.sequences()})
    assert len(gb.context_first) < gb.seqs.size  # the response-side samples share their pair's context
    model = load_model(reference.path, "cpu")
    loss, info = contrastive_group_loss(model, gb, "eq4", mle_weight=0.3)
    loss.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(gb.seqs)
    d = sequence_logprob(logits, gb.seqs.response_out, PAD) - gb.ref_logp
    own = gb.seqs.select(gb.self_index)
    nll = nll_loss(model(own), own.response_out, PAD)[0]
    plain = contrastive_loss(d[gb.pos_index], d[gb.neg_index], gb.s_pos, gb.s_neg, gb.pos_mask, gb.neg_mask) + 0.3 * nll
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5) and info["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert info["tokens"] == int(gb.seqs.response_out.ne(PAD).sum())
    for fast, p in zip(fast_grads, model.parameters()):
        assert torch.allclose(fast, p.grad, atol=1e-5, rtol=1e-4)


def test_beta_is_a_temperature_on_d(inputs):
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.text.tokenizer import PAD
    from cldg.training.groups import contrastive_group_loss
    from cldg.training.losses import contrastive_loss, sequence_logprob

    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), "train", GroupOptions(k=2))
    fake_ref = {s: -5.0 - (hash(s) % 7) for s in groups.sequences()}  # D far from 0, so that beta matters
    gb = make_group_batch(groups, [0, 1, 2], text, fake_ref)
    model = load_model(reference.path, "cpu")
    with torch.no_grad():
        d = sequence_logprob(model(gb.seqs), gb.seqs.response_out, PAD) - gb.ref_logp
        for beta in (1.0, 0.1, 2.0):
            got, info = contrastive_group_loss(model, gb, "eq4", beta=beta)
            want = contrastive_loss(beta * d[gb.pos_index], beta * d[gb.neg_index], gb.s_pos, gb.s_neg,
                                    gb.pos_mask, gb.neg_mask, "eq4")
            assert got.item() == pytest.approx(want.item(), rel=1e-5)
            assert info["d_pos"] == pytest.approx(d[gb.pos_index][gb.pos_mask].mean().item(), rel=1e-5)  # raw D
        assert contrastive_group_loss(model, gb, "eq4", beta=0.1)[0].item() != pytest.approx(
            contrastive_group_loss(model, gb, "eq4", beta=2.0)[0].item(), rel=1e-3)


def test_released_nll_anneal_schedule_and_mixing(inputs):
    import math

    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.training.groups import contrastive_group_loss
    from cldg.training.losses import released_anneal_weight

    # the released code's anneal_weight: (tanh((step * speed - 3500) / 1000) + 1) / 2
    assert released_anneal_weight(0) == pytest.approx((math.tanh(-3.5) + 1) / 2)
    assert released_anneal_weight(3500) == pytest.approx(0.5)
    assert released_anneal_weight(1750, speed=2.0) == pytest.approx(0.5)
    assert released_anneal_weight(10_000) > 0.99
    _, prepared, reference, samples = inputs
    text = text_index(prepared, reference)
    groups = build_groups(read_samples(samples.path), "train", GroupOptions(k=2))
    gb = make_group_batch(groups, [0, 1], text, {s: -4.0 for s in groups.sequences()})
    model = load_model(reference.path, "cpu")
    with torch.no_grad():
        cl, info = contrastive_group_loss(model, gb, "eq4")
        for w in (0.0, 0.3, 1.0):
            mixed, mixed_info = contrastive_group_loss(model, gb, "eq4", anneal=w)
            assert mixed.item() == pytest.approx((1 - w) * info["nll"] + w * cl.item(), rel=1e-5)
            assert mixed_info["anneal_w"] == w


def test_refreshed_reference_copies_the_target_and_resumes_with_the_same_copy(inputs, tmp_path):
    from cldg.models import load_model
    from cldg.training.groups import RefreshedReference

    _, _, reference, _ = inputs
    target = load_model(reference.path, "cpu")
    ref = RefreshedReference(load_model(reference.path, "cpu"), every=2, resume_dir=tmp_path)
    weight = lambda m: m.embedding.weight.detach().clone()  # noqa: E731
    mle = weight(ref.model)
    with torch.no_grad():
        target.embedding.weight.add_(1.0)
    ref.sync(target, 0)
    ref.sync(target, 1)
    assert torch.equal(weight(ref.model), mle)  # steps 0-1: the MLE reference
    ref.sync(target, 2)
    at_two = weight(target)
    assert torch.equal(weight(ref.model), at_two) and not any(p.requires_grad for p in ref.model.parameters())
    with torch.no_grad():
        target.embedding.weight.add_(1.0)
    ref.sync(target, 3)
    assert torch.equal(weight(ref.model), at_two)  # no copy between refreshes
    # a resumed run at step 3 gets the copy of step 2, not the target as it is now
    resumed = RefreshedReference(load_model(reference.path, "cpu"), every=2, resume_dir=tmp_path)
    resumed.sync(target, 3)
    assert torch.equal(weight(resumed.model), at_two)


def test_contrastive_train_with_refresh_and_anneal_runs_and_cleans_up(inputs):
    from cldg.stages import contrastive

    workdir, *_ = inputs
    common = CommonOptions(workdir=workdir, seed=3, device="cpu")
    art = contrastive.run(contrastive.Config(k=2, batch_size=8, max_steps=5, evals_per_epoch=1,
                                             refresh_reference_every=2, nll_anneal=True, anneal_speed=1000.0),
                          common)
    log = [json.loads(line) for line in art.file("train-log.jsonl").read_text().splitlines()]
    assert [r["anneal_w"] for r in log if r["type"] == "train"][0] == pytest.approx(
        (math.tanh(-3.5) + 1) / 2)
    assert art.config["refresh_reference_every"] == 2 and art.config["nll_anneal"]
    assert not any(p.name.startswith("resume") for p in art.path.iterdir())


STAGE_ABLATIONS = [{}, {"k": 1}, {"no_group": True}, {"no_positive_group": True}, {"no_negative_group": True},
                   {"response_side_only": True}, {"context_side_only": True}, {"no_matching_scores": True}]


@pytest.mark.parametrize("flags", STAGE_ABLATIONS, ids=lambda f: next(iter(f), "full"))
def test_the_stage_trains_on_the_groups_its_options_name(inputs, flags):
    """`contrastive-train --no-group` etc. reach the groups by name: the stage's train groups equal
    build_groups under GroupOptions(**flags), and each option changes them (a dropped or swapped option fails)."""
    from cldg.retrieval.mining import read_samples
    from cldg.stages import contrastive

    _, prepared, reference, samples = inputs
    cfg = contrastive.Config(**{"k": 2, **flags}, max_valid_groups=3)
    data = contrastive.load_groups(cfg, prepared, reference, samples)
    table = read_samples(samples.path)
    want = build_groups(table, "train", GroupOptions(**{"k": 2, **flags}))
    full = build_groups(table, "train", GroupOptions(k=2))
    assert len(data.train) == len(want)
    for g in range(len(want)):
        assert slots(data.train, g) == slots(want, g), g
    if flags:
        assert any(slots(data.train, g) != slots(full, g) for g in range(len(want))), "the option changed nothing"
    assert len(data.valid) == 3  # --max-valid-groups
    # the reference cache covers every sequence of the full groups, whichever ablation runs
    assert data.sequences == full.sequences() | build_groups(table, "valid", GroupOptions(k=2)).sequences()


def test_the_stage_applies_the_loss_its_options_name():
    """--loss, --mle-weight, --beta, --mle-warmup-steps, --nll-anneal and --anneal-speed reach the objective by name
    (it is built positionally); with --no-matching-scores the loss applied (the one metrics.json names) is eq3 for
    eq4 and unchanged otherwise."""
    from cldg.stages import contrastive
    from cldg.training.recipes.contrastive import ContrastiveObjective

    cfg = contrastive.Config(loss="eq2", mle_weight=0.25, beta=0.5, mle_warmup_steps=7, nll_anneal=True,
                             anneal_speed=3.0)
    assert contrastive.objective(cfg) == ContrastiveObjective(variant="eq2", mle_weight=0.25, beta=0.5,
                                                             mle_warmup_steps=7, nll_anneal=True, anneal_speed=3.0)
    assert contrastive.applied_loss(contrastive.Config(no_matching_scores=True)) == "eq3"
    assert contrastive.applied_loss(contrastive.Config(no_matching_scores=True, loss="soft")) == "soft"


def test_reference_dir_and_samples_dir_pick_artifacts_other_than_the_latest(inputs, tmp_path):
    """--reference-dir and --samples-dir name the inputs; without them the latest of each is used."""
    from cldg.stages import contrastive, pretrain

    src, prepared, reference, samples = inputs
    workdir = tmp_path / "work"
    shutil.copytree(src, workdir, symlinks=True)
    common = CommonOptions(workdir=workdir, seed=3, device="cpu")
    store = ArtifactStore(workdir)
    first_ref, first_samples = store.latest("reference"), store.latest("samples")
    newer_ref = pretrain.run(pretrain.Config(model="seq2seq", embedding_dim=16, hidden_size=16, num_layers=1,
                                             dropout=0.0, batch_size=16, max_steps=2, evals_per_epoch=1), common)
    with store.begin("samples", 1, {"matcher": "hand", "k": 2, "n": 1}, {"prepare": prepared}) as run:
        write_shards(run.dir, hand_mined_rows(prepared, 2, seed=1), n=1)
        newer_samples = run.commit(extra={"k": 2, "matcher": "hand"})
    assert store.latest("reference").path == newer_ref.path and store.latest("samples").path == newer_samples.path

    def inputs_of(art):
        return {k: v["fingerprint"] for k, v in art.manifest["inputs"].items() if k in ("reference", "samples")}

    base = dict(k=2, batch_size=8, max_steps=1, evals_per_epoch=1, max_valid_groups=4)
    named = contrastive.run(contrastive.Config(**base, reference_dir=first_ref.path, samples_dir=first_samples.path),
                            common)
    assert inputs_of(named) == {"reference": first_ref.fingerprint, "samples": first_samples.fingerprint}
    latest = contrastive.run(contrastive.Config(**base), common)
    assert inputs_of(latest) == {"reference": newer_ref.fingerprint, "samples": newer_samples.fingerprint}


def test_the_target_trains_without_dropout_by_default_so_d_starts_at_zero(inputs, tmp_path):
    """--disable-dropout (the default): the target is scored as the cached reference was (eval mode's forward,
    though in training mode), so D is exactly 0 at the first step. --no-disable-dropout keeps dropout, and D then
    starts away from 0. Only the new default enters the fingerprint: artifacts made before the option are reused."""
    from cldg.config import fingerprint_config
    from cldg.models import load_model
    from cldg.retrieval.mining import read_samples
    from cldg.stages import contrastive, pretrain
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob

    src, prepared, _, samples = inputs
    workdir = tmp_path / "work"
    shutil.copytree(src, workdir, symlinks=True)
    common = CommonOptions(workdir=workdir, seed=3, device="cpu")
    dropped = pretrain.run(pretrain.Config(model="seq2seq", embedding_dim=16, hidden_size=16, num_layers=1,
                                           dropout=0.5, batch_size=16, max_steps=2, evals_per_epoch=1), common)
    text = text_index(prepared, dropped)
    gb = make_group_batch(build_groups(read_samples(samples.path), "train", GroupOptions(k=2)), [0, 1, 2, 3], text,
                          None)
    with torch.no_grad():
        ref_logp = sequence_logprob(load_model(dropped.path, "cpu")(gb.seqs), gb.seqs.response_out, PAD)

    def d_at_first_step(**flags):
        torch.manual_seed(0)
        model, _ = contrastive.target_and_reference(contrastive.Config(**flags), dropped, tmp_path, "cpu", 3)
        assert model.training
        with torch.no_grad():
            return (sequence_logprob(model(gb.seqs), gb.seqs.response_out, PAD) - ref_logp).abs().max().item()

    assert d_at_first_step() < 1e-5
    assert d_at_first_step(disable_dropout=False) > 0.1
    assert fingerprint_config(contrastive.Config())["disable_dropout"] is True
    assert "disable_dropout" not in fingerprint_config(contrastive.Config(disable_dropout=False))
