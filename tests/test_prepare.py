"""`cldg prepare`: pairs, split, tokenizer, vectors, stats; bad input is one line and exit 2."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
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
    assert r.exit_code == 2 and "no dialogue with at least two non-empty turns" in r.output
    r = _prepare(tmp_path, "o.jsonl", b'{"turns": ["only one"]}\n')
    assert r.exit_code == 2


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
