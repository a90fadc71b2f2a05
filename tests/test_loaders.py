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
