"""Each native corpus format, read from a small file written here in exactly that format."""
from __future__ import annotations

import pytest

from cldg.data.loaders import BadLines, detect_format, read_dialogues
from cldg.errors import CldgError


def _read(path, fmt="auto"):
    return list(read_dialogues(path, fmt, BadLines()))


def test_personachat_parlai_text(tmp_path):
    p = tmp_path / "train_self_original.txt"
    p.write_text("1 your persona: i like cats.\n"
                 "2 hi , how are you ?\ti am good , and you ?\t\tcand a|cand b\n"
                 "3 great . do you have pets ?\tyes , two cats .\t\tx|y\n"
                 "1 your persona: i surf.\n"
                 "2 hello !\they there .\t\tx|y\n")
    assert detect_format(p) == "personachat"
    ds = _read(p)
    assert [d.turns for d in ds] == [["hi , how are you ?", "i am good , and you ?", "great . do you have pets ?",
                                      "yes , two cats ."], ["hello !", "hey there ."]]


def test_dailydialog_eou(tmp_path):
    p = tmp_path / "dialogues_text.txt"
    p.write_text("Hi there . __eou__ Hello ! __eou__ How are you ? __eou__\nGood morning . __eou__ Morning . __eou__\n")
    assert detect_format(p) == "dailydialog"
    assert [d.turns for d in _read(p)] == [["Hi there .", "Hello !", "How are you ?"], ["Good morning .", "Morning ."]]


def test_opensubtitles_blank_line_between_dialogues(tmp_path):
    p = tmp_path / "subs.txt"
    p.write_text("Where are you going?\nHome.\nWait for me.\n\nWho is there?\nIt is me.\n")
    assert detect_format(p) == "opensubtitles"
    assert [d.turns for d in _read(p)] == [["Where are you going?", "Home.", "Wait for me."], ["Who is there?", "It is me."]]


def test_douban_keeps_positive_lines_only(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("1\t你好 啊\t你好\t今天 天气 不错\n0\t你好 啊\t你好\t我 不 知道\n")
    assert detect_format(p) == "douban"
    assert [d.turns for d in _read(p)] == [["你好 啊", "你好", "今天 天气 不错"]]
    with pytest.raises(CldgError, match=r"train.txt:1: expected 'label"):
        p.write_text("2\tbad\n")
        _read(p, "douban")


def test_json_and_parquet_through_datasets(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    j = tmp_path / "d.json"
    j.write_text(json.dumps([{"turns": ["a b", "c d"]}, {"context": ["x"], "response": "y"}]))
    ds = _read(j)
    assert ds[0].turns == ["a b", "c d"] and ds[1].turns == ["x", "y"] and ds[1].pair_only
    q = tmp_path / "d.parquet"
    pq.write_table(pa.table({"turns": [["one", "two", "three"], ["four", "five"]]}), q)
    assert [d.turns for d in _read(q)] == [["one", "two", "three"], ["four", "five"]]


def test_pair_records_make_exactly_one_pair(tmp_path):
    from cldg.data.pairs import make_pairs

    p = tmp_path / "p.jsonl"
    p.write_text('{"context": ["a", "b", "c"], "response": "d"}\n{"turns": ["e", "f", "g"]}\n')
    ds = _read(p)
    tables = make_pairs({"train": ds, "valid": [], "test": []}, max_context_turns=2)
    assert tables["train"].response == ["d", "f", "g"]
    assert tables["train"].context == [["b", "c"], ["e"], ["e", "f"]]


@pytest.mark.parametrize("name, content, expected", [
    ("a.jsonl", '{"turns": ["a", "b"]}\n', "jsonl"),
    ("a.ndjson", '{"turns": ["a", "b"]}\n', "jsonl"),
    ("a.json", '[{"turns": ["a", "b"]}]', "json"),
    ("a.txt", '\n{"turns": ["a", "b"]}\n', "jsonl"),
    ("dialogues_text.txt", "Hi . __eou__ Hello . __eou__\n", "dailydialog"),
    ("valid.txt", "1 your persona: i ski.\n2 hi\thello\n", "personachat"),
    ("douban.tsv", "1\tni hao\thao\n", "douban"),
    ("subs.txt", "Hello.\nHi.\n\nBye.\nSee you.\n", "opensubtitles"),
])
def test_format_detection_by_extension_then_content(tmp_path, name, content, expected):
    p = tmp_path / name
    p.write_text(content)
    assert detect_format(p) == expected


def test_detection_of_parquet_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    q = tmp_path / "x.parquet"
    pq.write_table(pa.table({"turns": [["a", "b"]]}), q)
    assert detect_format(q) == "parquet"
    with pytest.raises(CldgError, match="is a directory"):
        detect_format(tmp_path)


def test_chitchat_corpus_groups_messages_by_sender():
    import chitchat_dataset

    raw = chitchat_dataset.Dataset()
    ds = list(read_dialogues(None, "auto", BadLines()))
    assert len(ds) == len(raw) == 7168
    first = ds[0]
    groups = raw[first.id]["messages"]
    # one turn per run of one sender's messages, so consecutive turns come from different senders
    assert len(first.turns) == len(groups)
    assert first.turns[0] == " ".join(m["text"] for m in groups[0]).strip()
    assert all(a[0]["sender"] != b[0]["sender"] for a, b in zip(groups, groups[1:]))
    assert sum(len(d.turns) >= 2 for d in ds) == 4018


def test_personachat_silence_and_bad_line(tmp_path):
    p = tmp_path / "pc.txt"
    p.write_text("1 your persona: i like tea.\n2 __SILENCE__\thi , anyone there ?\n3 yes , me .\tgreat !\n")
    assert [d.turns for d in _read(p, "personachat")] == [["hi , anyone there ?", "yes , me .", "great !"]]
    p.write_text("1 hi\thello\nno number here\n")
    with pytest.raises(CldgError, match=r"pc.txt:2: expected 'N text'"):
        _read(p, "personachat")
    bad = BadLines(skip=True)
    assert [d.turns for d in read_dialogues(p, "personachat", bad)] == [["hi", "hello"]]
    assert len(bad.lines) == 1 and bad.lines[0].endswith("pc.txt:2: expected 'N text' (ParlAI PersonaChat format)")


def test_dailydialog_line_without_separator_is_named(tmp_path):
    p = tmp_path / "dd.txt"
    p.write_text("A . __eou__ B . __eou__\nno separator here\n")
    with pytest.raises(CldgError, match=r"dd.txt:2: no '__eou__'"):
        _read(p, "dailydialog")


def test_bom_crlf_and_unicode_whitespace_are_normalised(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_bytes('\ufeff{"turns": ["  Hello\\tthere  ", "caf\u00e9\\u00a0ok"]}\r\n'.encode("utf-8"))
    assert [d.turns for d in _read(p)] == [["Hello there", "caf\u00e9 ok"]]


def test_skip_collects_non_utf8_and_long_lines(tmp_path):
    p = tmp_path / "s.txt"
    p.write_bytes(b"Hello.\nHi \xff there.\n" + b"x" * 200 + b"\nHow are you?\n")
    bad = BadLines(skip=True)
    ds = list(read_dialogues(p, "opensubtitles", bad, max_line_bytes=100))
    assert [d.turns for d in ds] == [["Hello.", "How are you?"]]
    assert [ln.split(": ", 1)[0] for ln in bad.lines] == [f"{p}:2", f"{p}:3"]
    assert "not valid UTF-8" in bad.lines[0] and "over --max-line-bytes 100" in bad.lines[1]


def test_empty_file_and_json_errors(tmp_path):
    e = tmp_path / "e.txt"
    e.write_bytes(b"")
    with pytest.raises(CldgError, match=r"e.txt:1: the file is empty"):
        _read(e)
    j = tmp_path / "bad.json"
    j.write_text('[{"turns": ["a", "b"]}, ')
    with pytest.raises(CldgError, match=r"bad.json: invalid JSON"):
        _read(j)
    j.write_text('[{"turns": ["a", "b"]}, {"text": "c"}]')
    with pytest.raises(CldgError, match=r"bad.json:record 2: missing field"):
        _read(j)
