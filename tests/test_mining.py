"""`cldg mine-samples`: group-wise dual sampling with the BM25 matcher, shards, resume, inspect-samples."""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from cldg.config import CommonOptions
from cldg.errors import CldgError, MissingArtifactError

K = 2
MINE = dict(matcher="bm25", k=K, n_candidates=8, n_random=4, threads=1)


@pytest.fixture(scope="module")
def mining_env(prepared_workdir, tmp_path_factory):
    """(workdir, prepare artifact, index artifact, train pairs, valid pairs) in a workdir of our own."""
    from cldg.data.pairs import read_pairs
    from cldg.stages import index

    _, prepared = prepared_workdir
    workdir = tmp_path_factory.mktemp("mine-work")
    idx = index.run(index.Config(prepare_dir=prepared.path, threads=1), CommonOptions(workdir=workdir))
    return (workdir, prepared, idx, read_pairs(prepared.file("pairs-train.parquet")),
            read_pairs(prepared.file("pairs-valid.parquet")))


def mine(env, **options):
    from cldg.stages import mine as mine_stage

    workdir, prepared, idx = env[:3]
    cfg = mine_stage.Config(**{**MINE, **options}, prepare_dir=prepared.path, index_dir=idx.path)
    return mine_stage.run(cfg, CommonOptions(workdir=workdir, seed=5))


@pytest.fixture(scope="module")
def full_run(mining_env):
    from cldg.retrieval.mining import read_samples

    art = mine(mining_env)
    return art, read_samples(art.path)


def sorted_rows(cols):
    from cldg.retrieval.mining import COLUMNS

    return sorted(zip(*(cols[c] for c in COLUMNS)))


# --- the BM25 matcher -------------------------------------------------------------------------------

def test_bm25_matcher_ranks_by_overlap_and_is_batch_independent():
    from cldg.matching.base import Matcher
    from cldg.matching.bm25 import BM25Matcher

    docs = ["i love pizza", "the weather is cold", "my dog is called max", "pizza and pasta", "i play tennis"]
    m = BM25Matcher(str.split, docs)
    assert isinstance(m, Matcher)
    ctx = [["do you like pizza ?", "i love it"]]
    s = m.score(ctx * 3, ["pizza and pasta", "the weather is cold", ""])
    assert s.dtype == np.float32 and s.shape == (3,)
    assert s[0] > s[1] == 0.0 and s[2] == 0.0
    assert np.all((s >= 0) & (s < 1))
    # a rare shared word is worth more than a common one
    assert m.score([["pasta"]], ["pizza and pasta"])[0] > m.score([["pizza"]], ["pizza and pasta"])[0]
    # a pair's score does not depend on the batch it is scored in
    alone = m.score([["my dog"]], ["my dog is called max"])[0]
    batch = m.score([["x"], ["my dog"], ["pizza"]], ["i love pizza", "my dog is called max", "pizza"])
    assert batch[1] == alone
    # squashing: raw / (raw + half)
    raw = m.raw_score(["my dog"], "my dog is called max")
    assert alone == pytest.approx(raw / (raw + m.half), rel=1e-6)


# --- the sampling algorithm on hand-made pairs ------------------------------------------------------

class FakeSearcher:
    """Returns fixed hits (pair id, score) per query text."""

    def __init__(self, hits):
        self.hits = hits

    def batch_search(self, queries, k):
        return [self.hits.get(q, [])[:k] for q in queries]


class LengthMatcher:
    name = "length"

    def score(self, contexts, responses):
        return np.array([min(len(r) / 50, 1.0) for r in responses], dtype=np.float32)


def test_dual_sampling_removes_self_and_duplicates_and_splits_top_bottom():
    from cldg.retrieval.mining import Query, TrainPool, mine_dual_samples

    responses = ["hello there", "hello there", "hi", "a much longer response indeed", "o", "medium reply", "HI"]
    pool = TrainPool(list(range(10, 17)), [[f"context {i}"] for i in range(7)], responses)
    q = Query("train", 10, ["context 0"], "hello there")
    # the context index returns the pair itself and a duplicate of its response first
    ctx_hits = FakeSearcher({"context 0": [(10, 9.0), (11, 8.0), (12, 7.0), (16, 6.5), (13, 6.0), (14, 5.0),
                                           (15, 4.0)]})
    resp_hits = FakeSearcher({"hello there": [(11, 5.0), (10, 4.0), (12, 3.0), (13, 2.0), (14, 1.0)]})
    cols, notes = mine_dual_samples([q], pool, ctx_hits, resp_hits, LengthMatcher(), k=2, n_candidates=4,
                                    n_random=0, seed=0)
    assert notes == []
    resp = [(p, r, c) for s, p, r, c in zip(cols["side"], cols["polarity"], cols["rank"], cols["cand_pair_id"])
            if s == "response"]
    # candidates: 12 "hi", 13 long, 14 "o", 15 "medium reply" ("HI" of 16 duplicates "hi" and is dropped)
    assert resp == [("pos", 0, 13), ("pos", 1, 15), ("neg", 0, 14), ("neg", 1, 12)]
    ctx_side = [c for s, c in zip(cols["side"], cols["cand_pair_id"]) if s == "context"]
    assert 10 not in ctx_side and len(ctx_side) == 4
    for pol, prob, w in zip(cols["polarity"], cols["matcher_prob"], cols["weight"]):
        assert w == pytest.approx(prob if pol == "pos" else prob - 1)


def test_too_few_candidates_is_recorded_not_padded():
    from cldg.retrieval.mining import Query, TrainPool, mine_dual_samples

    pool = TrainPool([1, 2, 3], [["a"], ["b"], ["c"]], ["x", "y", "z"])
    q = Query("valid", 99, ["a"], "x")
    cols, notes = mine_dual_samples([q], pool, FakeSearcher({}), FakeSearcher({}), LengthMatcher(), k=3,
                                    n_candidates=5, n_random=10, seed=0)
    # the response "x" of pair 1 equals r and is removed: 2 candidates -> 1 pos + 1 neg, with a note
    per_side = Counter(zip(cols["side"], cols["polarity"]))
    assert per_side[("response", "pos")] == per_side[("response", "neg")] == 1
    assert any("pair 99 response side: 2 candidates, 1 of 3" in n for n in notes)
    assert set(cols["cand_pair_id"]) <= {1, 2, 3}


# --- the stage on the tiny corpus -------------------------------------------------------------------

def test_every_pair_gets_k_positives_and_negatives_per_side(mining_env, full_run):
    art, cols = full_run
    _, _, _, train, valid = mining_env
    assert art.manifest["rows"]["queries"] == len(train) + len(valid)
    assert art.manifest["rows"]["samples"] == len(cols["pair_id"])
    groups = Counter(zip(cols["pair_id"], cols["side"], cols["polarity"]))
    short = {int(n.split()[2]) for n in art.manifest["short_groups"]}
    for split, table in (("train", train), ("valid", valid)):
        for pid in table.pair_id:
            for side in ("response", "context"):
                for pol in ("pos", "neg"):
                    assert groups[(pid, side, pol)] == K or pid in short, (split, pid, side, pol)
    assert set(cols["split"]) == {"train", "valid"}
    assert len(short) < len(train) // 10  # the tiny corpus still has enough candidates for almost every pair


def test_samples_are_never_the_pair_itself_and_come_from_train(mining_env, full_run):
    _, cols = full_run
    _, _, _, train, valid = mining_env
    resp_of = dict(zip(train.pair_id, train.response)) | dict(zip(valid.pair_id, valid.response))
    ctx_of = dict(zip(train.pair_id, train.context)) | dict(zip(valid.pair_id, valid.context))
    train_ids = set(train.pair_id)
    seen = defaultdict(list)
    for pid, side, cand in zip(cols["pair_id"], cols["side"], cols["cand_pair_id"]):
        assert cand != pid
        assert cand in train_ids
        if side == "response":
            assert resp_of[cand].lower() != resp_of[pid].lower()
        else:
            assert ctx_of[cand] != ctx_of[pid]
        seen[(pid, side)].append(cand)
    assert all(len(c) == len(set(c)) for c in seen.values())  # pos and neg never share a candidate


def test_scores_lie_in_their_ranges_and_positives_outrank_negatives(full_run):
    _, cols = full_run
    best = defaultdict(lambda: {"pos": [], "neg": []})
    for pid, side, pol, rank, prob, w in zip(cols["pair_id"], cols["side"], cols["polarity"], cols["rank"],
                                             cols["matcher_prob"], cols["weight"]):
        assert 0.0 <= prob <= 1.0
        if pol == "pos":
            assert 0.0 < w <= 1.0 and w == pytest.approx(max(prob, 1e-6))
        else:
            assert -1.0 <= w <= 0.0 and w == pytest.approx(prob - 1.0)
        best[(pid, side)][pol].append((rank, prob))
    for g in best.values():
        pos = [p for _, p in sorted(g["pos"])]
        neg = [p for _, p in sorted(g["neg"])]
        assert pos == sorted(pos, reverse=True) and neg == sorted(neg)  # pos best first, neg worst first
        assert not pos or min(pos) >= max(neg)


def test_shards_reread_to_the_same_rows_and_two_halves_equal_one_run(mining_env, full_run):
    import pyarrow.parquet as pq

    from cldg.artifacts import ArtifactStore
    from cldg.retrieval.mining import read_samples

    art, cols = full_run
    assert sorted_rows(read_samples(art.path)) == sorted_rows(cols)
    first = mine(mining_env, shard="0/2")
    assert first.manifest.get("partial") and first.path.name.endswith(".partial")
    assert [p.name for p in first.path.glob("shard-*.parquet")] == ["shard-00000-of-00002.parquet"]
    assert ArtifactStore(mining_env[0]).latest("samples").path == art.path  # nothing half-done became latest
    mtime = (first.path / "shard-00000-of-00002.parquet").stat().st_mtime_ns
    again = mine(mining_env, shard="0/2")  # a rerun skips the shard that is there
    assert (again.path / "shard-00000-of-00002.parquet").stat().st_mtime_ns == mtime
    second = mine(mining_env, shard="1/2")  # the last shard completes the artifact
    assert not second.manifest.get("partial") and (second.path / "manifest.json").is_file()
    assert second.manifest["rows"]["samples"] == art.manifest["rows"]["samples"]
    assert sorted_rows(read_samples(second.path)) == sorted_rows(cols)
    halves = [pq.read_table(p).to_pydict() for p in sorted(second.path.glob("shard-*.parquet"))]
    assert set(halves[0]["pair_id"]).isdisjoint(halves[1]["pair_id"])
    assert not list(second.path.glob(".*"))  # locks and chunk files are gone


def test_a_crash_resumes_at_the_first_unfinished_chunk(mining_env, full_run, monkeypatch):
    from cldg.retrieval import mining
    from cldg.retrieval.mining import read_samples

    _, cols = full_run
    real = mining.plan_chunk  # both the sequential and the overlapped loop plan each chunk through it
    calls = []

    def crash_on_third(queries, *args, **kwargs):
        calls.append(queries[0].pair_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(queries, *args, **kwargs)

    monkeypatch.setattr(mining, "plan_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        mine(mining_env, num_shards=3, chunk_size=40)
    done_before = list(calls[:2])
    calls.clear()
    monkeypatch.setattr(mining, "plan_chunk", lambda q, *a, **kw: (calls.append(q[0].pair_id), real(q, *a, **kw))[1])
    art = mine(mining_env, num_shards=3, chunk_size=40)
    assert not set(done_before) & set(calls)  # finished chunks were not mined again
    assert sorted_rows(read_samples(art.path)) == sorted_rows(cols)


def test_bad_options_and_missing_matcher_are_one_line_errors(mining_env):
    from cldg.stages.mine import parse_shard

    assert parse_shard("1/4", 1) == ([1], 4) and parse_shard("", 3) == ([0, 1, 2], 3)
    for bad in ("4/4", "1-4", "x/2", "-1/2"):
        with pytest.raises(CldgError, match="--shard"):
            parse_shard(bad, 1)
    with pytest.raises(CldgError, match="--k"):
        mine(mining_env, k=0)
    with pytest.raises(MissingArtifactError, match="cldg train-matcher"):
        mine(mining_env, matcher="msn")


def test_inspect_samples_shows_groups_with_texts_and_scores(mining_env, full_run, capsys):
    from cldg.tools.inspect_samples import inspect_samples

    art, _ = full_run
    _, _, _, train, _ = mining_env
    report = inspect_samples(mining_env[0], art.path, n=2, seed=0, as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed == report["pairs"] and len(printed) == 2
    train_responses = set(train.response)
    for entry in printed:
        labels = Counter((g["side"], g["polarity"]) for g in entry["groups"])
        assert labels == {("response", "pos"): K, ("response", "neg"): K, ("context", "pos"): K,
                          ("context", "neg"): K}
        for g in entry["groups"]:
            if g["side"] == "response":
                assert g["text"] in train_responses and g["text"] != entry["response"]
    inspect_samples(mining_env[0], None, n=1, seed=1, as_json=False)  # the rich tables render
    assert "r+1" in capsys.readouterr().out  # what was asked for goes to stdout
    with pytest.raises(CldgError, match="-n -2: show at least one pair"):  # was an internal ValueError
        inspect_samples(mining_env[0], None, n=-2, seed=1, as_json=False)


def test_overlapped_mining_and_the_numpy_backend_give_the_sequential_lucene_rows(mining_env):
    """--overlap (retrieval in a producer thread) and the retrieval backend (numpy on 2 threads, Lucene) change
    speed, not rows."""
    from cldg.matching.bm25 import BM25Matcher
    from cldg.retrieval.mining import Query, TrainPool, mine_dual_samples, mine_pipelined
    from cldg.stages.mine import open_searchers

    _, prepared, idx, train, valid = mining_env
    pool = TrainPool(train.pair_id, train.context, train.response)
    queries = [Query("train", train.pair_id[i], train.context[i], train.response[i]) for i in range(len(train))]
    queries += [Query("valid", valid.pair_id[i], valid.context[i], valid.response[i]) for i in range(len(valid))]
    chunks = [queries[lo:lo + 37] for lo in range(0, len(queries), 37)]
    matcher = BM25Matcher(str.split, train.response)
    opts = (K, 8, 4, 5)
    rows = {}
    for backend in ("lucene", "numpy"):
        searchers = open_searchers(idx, 2, backend, pool)
        sequential = [mine_dual_samples(c, pool, *searchers, matcher, *opts) for c in chunks]
        overlapped = list(mine_pipelined(chunks, pool, *searchers, matcher, *opts, depth=2, score_threads=1))
        assert overlapped == sequential
        rows[backend] = sorted(r for cols, _ in sequential for r in sorted_rows(cols))
        for s in searchers:
            s.close()
    assert rows["numpy"] == rows["lucene"] and len(rows["lucene"]) > 4 * len(queries)


def test_a_failure_in_the_retrieval_thread_reaches_the_caller(mining_env):
    from cldg.retrieval.mining import Query, TrainPool, mine_pipelined

    _, _, _, train, _ = mining_env
    pool = TrainPool(train.pair_id, train.context, train.response)

    class Broken:
        def batch_search(self, queries, k):
            raise OSError("index gone")

    chunks = [[Query("train", train.pair_id[0], train.context[0], train.response[0])]]
    with pytest.raises(OSError, match="index gone"):
        list(mine_pipelined(chunks, pool, Broken(), Broken(), None, K, 8, 4, 5))
