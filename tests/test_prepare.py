"""`cldg prepare`: pairs, split, tokenizer, vectors, stats; bad input is one line and exit 2."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cldg.cli import app
from cldg.text.ngrams import load_ngram_counts
from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK, DialogueTokenizer
from cldg.text.vectors import load_word_vectors

runner = CliRunner()


def test_prepare_writes_the_contract(prepared_workdir):
    _, art = prepared_workdir
    splits = {s: pq.read_table(art.file(f"pairs-{s}.parquet")).to_pydict() for s in ("train", "valid", "test")}
    ids = [i for s in splits.values() for i in s["pair_id"]]
    assert len(ids) == len(set(ids))  # pair ids unique across splits
    dialogue_sets = [set(s["dialogue_id"]) for s in splits.values()]
    assert not (dialogue_sets[0] & dialogue_sets[1]) and not (dialogue_sets[0] & dialogue_sets[2])
    for ctx, turn in zip(splits["train"]["context"], splits["train"]["turn"]):
        assert 1 <= len(ctx) <= 3 and len(ctx) == min(turn, 3)
    tok = DialogueTokenizer.load(art.file("tokenizer.json"))
    assert [tok.id_to_token(i) for i in (PAD, UNK, BOS, EOS, SEP)] == ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>"]
    assert tok.words("I had PIZZA, last night!") == ["i", "had", "pizza", ",", "last", "night", "!"]
    assert tok.decode(tok.encode("i had pizza")) == "i had pizza"
    assert tok.encode("zzzunseenword") == [UNK]
    vecs, has = load_word_vectors(art.file("word-vectors.safetensors"))
    assert vecs.shape == (tok.vocab_size, 16) and has[5:].all() and not has[:5].any()
    counts = load_ngram_counts(art.file("ngram-counts.parquet"))
    assert counts[1][("pizza",)] > 0 and counts[2][("i", "had")] > 0
    stats = art.manifest["corpus_stats"]
    assert stats["pairs"] == sum(len(s["pair_id"]) for s in splits.values())
    assert stats["train_pairs"] == len(splits["train"]["pair_id"]) and stats["vocabulary"] == tok.vocab_size


def test_second_run_is_skipped(prepared_workdir, tiny_dialogues_path):
    workdir, art = prepared_workdir
    args = ["prepare", "--input", str(tiny_dialogues_path), "--workdir", str(workdir), "--seed", "1",
            "--vector-dim", "16", "--vector-epochs", "3", "--valid-fraction", "0.1", "--test-fraction", "0.1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output
    assert json.loads(art.file("manifest.json").read_text())["fingerprint"] == art.fingerprint


def _prepare(tmp_path, name, content: bytes, *extra):
    p = tmp_path / name
    p.write_bytes(content)
    return runner.invoke(app, ["prepare", "--input", str(p), "--workdir", str(tmp_path / "w"),
                               "--vector-dim", "8", "--vector-epochs", "1", *extra])


def test_bad_json_line_names_file_and_line(tmp_path):
    good = b'{"turns": ["hi there", "hello"]}\n'
    result = _prepare(tmp_path, "c.jsonl", good * 3 + b'{"turns": ["a", \n' + good)
    assert result.exit_code == 2
    assert "c.jsonl:4: invalid JSON" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / "w" / "prepare").glob("*/manifest.json"))  # nothing marked complete


def test_missing_field_non_utf8_and_long_line(tmp_path):
    r = _prepare(tmp_path, "a.jsonl", b'{"text": "x"}\n')
    assert r.exit_code == 2 and "a.jsonl:1: missing field" in r.output
    r = _prepare(tmp_path, "b.jsonl", b'{"turns": ["caf\xe9 ok", "yes"]}\n')
    assert r.exit_code == 2 and "b.jsonl:1: not valid UTF-8" in r.output
    r = _prepare(tmp_path, "l.jsonl", b'{"turns": ["' + b"a" * (1 << 20) + b'", "b"]}\n')
    assert r.exit_code == 2 and "l.jsonl:1: line is" in r.output


def test_empty_file_and_one_turn_dialogues_are_clear_errors(tmp_path):
    r = _prepare(tmp_path, "e.jsonl", b"")
    assert r.exit_code == 2 and "e.jsonl:1: the file is empty" in r.output
    r = _prepare(tmp_path, "o.jsonl", b'{"turns": ["only one"]}\n{"turns": ["", "two but one empty"]}\n')
    assert r.exit_code == 2 and "o.jsonl: no dialogue with at least two non-empty turns" in r.output
    assert not any((tmp_path / "w" / "prepare").glob("*/manifest.json"))


def test_skip_bad_lines_records_every_skipped_line(tmp_path):
    from fixtures_data import make_dialogues

    lines = [json.dumps(d).encode() for d in make_dialogues(20)]
    lines.insert(3, b"{broken")
    lines.insert(9, b'{"turns": 5}')
    r = _prepare(tmp_path, "s.jsonl", b"\n".join(lines) + b"\n", "--skip-bad-lines")
    assert r.exit_code == 0, r.output
    manifest = json.loads(next((tmp_path / "w" / "prepare").glob("*/manifest.json")).read_text())
    assert len(manifest["skipped_lines"]) == 2
    assert manifest["skipped_lines"][0].startswith(str(tmp_path / "s.jsonl") + ":4:")
    assert manifest["corpus_stats"]["skipped_lines"] == 2


# ---- library pieces: pairs, split, statistics, tokenizer, vectors ----

def _dialogues(n, turns=4):
    from cldg.data.loaders import Dialogue

    return [Dialogue(f"d{i}", [f"turn {j} of dialogue {i}" for j in range(turns)]) for i in range(n)]


def test_split_is_by_dialogue_seeded_and_complete():
    from cldg.data.pairs import split_dialogues

    ds = _dialogues(100)
    a = split_dialogues(ds, 0.1, 0.2, seed=1)
    ids = {s: [d.id for d in a[s]] for s in a}
    assert (len(ids["train"]), len(ids["valid"]), len(ids["test"])) == (70, 10, 20)
    assert sorted(sum(ids.values(), [])) == sorted(d.id for d in ds)  # every dialogue once
    assert {s: [d.id for d in v] for s, v in split_dialogues(ds, 0.1, 0.2, seed=1).items()} == ids
    assert [d.id for d in split_dialogues(ds, 0.1, 0.2, seed=2)["test"]] != ids["test"]


def test_context_window_and_pair_ids():
    from cldg.data.pairs import make_pairs

    ds = _dialogues(2, turns=6)
    t = make_pairs({"train": ds[:1], "valid": ds[1:], "test": []}, max_context_turns=2)
    assert t["train"].turn == [1, 2, 3, 4, 5] and t["valid"].pair_id == [5, 6, 7, 8, 9]
    assert t["train"].context[0] == ["turn 0 of dialogue 0"]
    assert t["train"].context[4] == ["turn 3 of dialogue 0", "turn 4 of dialogue 0"]
    assert t["train"].response[4] == "turn 5 of dialogue 0"


def test_clean_drops_and_counts_empty_turns_short_dialogues_and_renames_ids():
    from cldg.data.loaders import Dialogue
    from cldg.data.pairs import CleanStats, clean_dialogues

    stats = CleanStats()
    kept = clean_dialogues([Dialogue("a", ["hi", "", "hello"]), Dialogue("b", ["alone", ""]),
                            Dialogue("a", ["x", "y"])], stats)
    assert [d.turns for d in kept] == [["hi", "hello"], ["x", "y"]] and [d.id for d in kept] == ["a", "a#2"]
    assert (stats.dialogues_in, stats.empty_turns_dropped, stats.short_dialogues_dropped,
            stats.renamed_duplicate_ids) == (3, 2, 1, 1)


def test_subset_respects_dialogue_and_pair_caps():
    from cldg.data.pairs import subset_dialogues

    ds = _dialogues(50, turns=5)  # 4 pairs each
    assert len(subset_dialogues(ds, 7, 0, seed=3)) == 7
    sub = subset_dialogues(ds, 0, 30, seed=3)
    assert sum(len(d.turns) - 1 for d in sub) == 28  # whole dialogues only, under the cap
    assert [d.id for d in sub] == [d.id for d in subset_dialogues(ds, 0, 30, seed=3)]
    assert subset_dialogues(ds, 0, 0, seed=3) is ds


def test_table1_statistics_by_hand():
    from cldg.data.loaders import Dialogue
    from cldg.data.pairs import corpus_statistics, make_pairs

    splits = {"train": [Dialogue("a", ["hi there", "hello", "how are you"]), Dialogue("b", ["hi there", "hello"])],
              "valid": [Dialogue("c", ["hi there", "hello"])], "test": []}
    tables = make_pairs(splits, max_context_turns=3)
    st = corpus_statistics(splits, tables, lambda u: len(u.split()), vocab_size=42)
    # pairs: a -> 2, b -> 1, c -> 1; contexts have 1, 2, 1, 1 turns
    assert (st["pairs"], st["train_pairs"], st["valid_pairs"], st["test_pairs"]) == (4, 3, 1, 0)
    assert st["avg_turns_per_context"] == 1.25
    assert st["avg_words_per_utterance"] == round((2 + 1 + 3 + 2 + 1 + 2 + 1) / 7, 3)
    assert st["duplicate_train_pairs"] == 1 and st["heldout_pairs_seen_in_train"] == 1
    assert st["duplicate_dialogues"] == 1 and st["vocabulary"] == 42


def test_tokenizer_cap_min_freq_and_pretokenized(tmp_path):
    texts = ["the cat sat", "the cat ran", "the dog ran", "a bird"]
    tok = DialogueTokenizer.train(texts, vocab_size=8)
    assert tok.vocab_size == 8 and tok.token_to_id("the") == 5  # most frequent word first after specials
    assert tok.words("The CAT") == ["the", "cat"] and tok.encode("bird") == [UNK]
    assert DialogueTokenizer.train(texts, vocab_size=100, min_freq=2).vocab() == \
        ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>", "the", "cat", "ran"]
    zh = DialogueTokenizer.train(["今天 天气 不错", "今天 很 好"], vocab_size=100, pretokenized=True)
    assert zh.words("今天 天气,不错") == ["今天", "天气,不错"]  # whitespace only, no punctuation split
    assert zh.decode(zh.encode("今天 很 好")) == "今天 很 好"
    zh.save(tmp_path / "t.json")
    assert DialogueTokenizer.load(tmp_path / "t.json").vocab() == zh.vocab()


def test_vec_file_reading(tmp_path):
    from cldg.errors import CldgError
    from cldg.text.vectors import read_vec_file

    vocab = ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>", "hello", "world", "rare"]
    p = tmp_path / "v.vec"
    p.write_text("4 3\nHello 1 2 3\nhello 9 9 9\nworld 0.5 0 -1\nother 1 1 1\n")
    vecs, has = read_vec_file(p, vocab, 5)
    assert vecs.shape == (8, 3) and has.tolist() == [0, 0, 0, 0, 0, 1, 1, 0]
    assert vecs[5].tolist() == [1, 2, 3] and vecs[6].tolist() == [0.5, 0, -1] and not vecs[7].any()
    p.write_text("hello 1 2 3\nworld 1 2\n")
    with pytest.raises(CldgError, match=r"v.vec:2: expected 3 numbers after the word, got 2"):
        read_vec_file(p, vocab, 5)
    p.write_text("2 3\nhello 1 2\nworld 1 2 3\n")  # the header's dimension: line 2 is the wrong one
    with pytest.raises(CldgError, match=r"v.vec:2: expected 3 numbers after the word \(the header's dimension\), got 2"):
        read_vec_file(p, vocab, 5)


# ---- the stage, through the CLI ----

def _jsonl(dialogues) -> bytes:
    return "".join(json.dumps({"turns": t}) + "\n" for t in dialogues).encode()


def _manifest(workdir):
    return json.loads((workdir / "prepare" / "latest" / "manifest.json").read_text())


def test_drops_counts_and_duplicates_reach_manifest_and_table(tmp_path):
    from fixtures_data import make_dialogues

    dialogues = [d["turns"] for d in make_dialogues(20)]
    dialogues += [["only one turn"], ["  ", "   "], ["hello", "", "hi"], dialogues[0]]
    r = _prepare(tmp_path, "c.jsonl", _jsonl(dialogues), "--valid-fraction", "0.1", "--test-fraction", "0.1")
    assert r.exit_code == 0, r.output
    assert "Corpus statistics" in r.output and "avg words per utterance" in r.output
    st = _manifest(tmp_path / "w")["corpus_stats"]
    assert st["dialogues_read"] == 24 and st["short_dialogues_dropped"] == 2
    assert st["empty_turns_dropped"] == 3 and st["duplicate_dialogues"] == 1
    assert st["train_dialogues"] + st["valid_dialogues"] + st["test_dialogues"] == 22


def test_crash_midway_leaves_no_complete_artifact_and_rerun_works(tmp_path, monkeypatch, tiny_dialogues_path):
    import cldg.text.vectors

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during vector training

    workdir = tmp_path / "w"
    args = ["prepare", "--input", str(tiny_dialogues_path), "--workdir", str(workdir), "--vector-dim", "8",
            "--vector-epochs", "1"]
    monkeypatch.setattr(cldg.text.vectors, "train_fasttext", boom)
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert not list((workdir / "prepare").glob("*/manifest.json")) and not (workdir / "prepare" / "latest").exists()
    monkeypatch.undo()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    m = _manifest(workdir)
    assert set(m["files"]) == {"pairs-train.parquet", "pairs-valid.parquet", "pairs-test.parquet", "tokenizer.json",
                               "ngram-counts.parquet", "word-vectors.safetensors"}


def test_user_vec_file_gives_the_vectors(tmp_path, tiny_dialogues_path):
    vec = tmp_path / "wiki.vec"
    vec.write_text("3 4\npizza 1 0 0 0\nweather 0 1 0 0\nqwertyuiop 0 0 1 0\n")
    r = runner.invoke(app, ["prepare", "--input", str(tiny_dialogues_path), "--workdir", str(tmp_path / "w"),
                            "--vectors", str(vec)])
    assert r.exit_code == 0, r.output
    art_dir = (tmp_path / "w" / "prepare" / "latest").resolve()
    tok = DialogueTokenizer.load(art_dir / "tokenizer.json")
    vecs, has = load_word_vectors(art_dir / "word-vectors.safetensors")
    assert vecs.shape == (tok.vocab_size, 4) and int(has.sum()) == 2
    assert vecs[tok.token_to_id("pizza")].tolist() == [1, 0, 0, 0] and has[tok.token_to_id("weather")]
    assert _manifest(tmp_path / "w")["corpus_stats"]["words_with_vectors"] == 2


def test_douban_pretokenized_end_to_end(tmp_path):
    lines = []
    for i in range(12):
        lines.append(f"1\t你好 啊 {i}\t你好 朋友\t今天 天气 不错 {i}\n")
        lines.append(f"0\t你好 啊 {i}\t你好 朋友\t我 不 知道\n")
    r = _prepare(tmp_path, "douban.txt", "".join(lines).encode(), "--pretokenized")
    assert r.exit_code == 0, r.output
    art_dir = (tmp_path / "w" / "prepare" / "latest").resolve()
    tok = DialogueTokenizer.load(art_dir / "tokenizer.json")
    assert tok.token_to_id("天气") != UNK and tok.token_to_id("知道") == UNK  # negatives are not dialogue text
    pairs = sum(len(pq.read_table(art_dir / f"pairs-{s}.parquet")) for s in ("train", "valid", "test"))
    assert pairs == 24


def test_usage_errors_are_one_line_exit_2(tmp_path):
    for args, msg in [(["--input", str(tmp_path / "nope.jsonl")], "no such file"),
                      (["--valid-fraction", "0.7"], "--valid-fraction 0.7: must be in [0, 0.5)"),
                      (["--vocab-size", "3"], "must exceed the 5 special tokens")]:
        r = runner.invoke(app, ["prepare", "--workdir", str(tmp_path / "w"), *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["prepare", "--workdir", str(tmp_path / "w"), "--format", "xml"])
    assert r.exit_code == 2


def test_skip_bad_lines_in_native_format(tmp_path):
    content = b"Hello.\nHi!\n\nHow are you \xfe?\nFine.\nGood.\n\n" + b"Bye.\n" * 2 + b"\n" + b"A.\nB.\n" * 6
    r = _prepare(tmp_path, "subs.txt", content)
    assert r.exit_code == 2 and "subs.txt:4: not valid UTF-8" in r.output
    r = _prepare(tmp_path, "subs.txt", content, "--skip-bad-lines")
    assert r.exit_code == 0, r.output
    assert _manifest(tmp_path / "w")["skipped_lines"] == [f"{tmp_path / 'subs.txt'}:4: not valid UTF-8 "
                                                          "(invalid start byte at byte 12)"]
