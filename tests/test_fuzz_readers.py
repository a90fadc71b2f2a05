"""Fuzzed corpus files and TOML configs: every input ends in dialogues or in one clear line (CldgError ->
exit 2), never another exception or a hang. A few hundred cases here; bench/fuzz_readers.py runs
10,000 per reader."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_strategies as fs

CASES = {"json": 40, "parquet": 30}  # these two are slower per case; the line readers get 60

FUZZ = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("reader", [r for r in fs.READERS if r != "auto"])
def test_reader_ends_in_dialogues_or_one_clear_line(reader, tmp_path):
    @settings(max_examples=CASES.get(reader, 60), **FUZZ)
    @given(data=fs.STRATEGIES[reader], skip=st.booleans(), max_line_bytes=st.sampled_from([1 << 20, 64]))
    def check(data, skip, max_line_bytes):
        with fs.time_limit(30):
            fs.check_reader(tmp_path, reader, data, skip=skip, max_line_bytes=max_line_bytes)

    check()


def test_format_detection_ends_in_dialogues_or_one_clear_line(tmp_path):
    @settings(max_examples=60, **FUZZ)
    @given(case=fs.auto_file, skip=st.booleans())
    def check(case, skip):
        data, ext = case
        with fs.time_limit(30):
            fs.check_reader(tmp_path, "auto", data, ext=ext, skip=skip)

    check()


def test_toml_config_ends_in_a_config_or_one_clear_line(tmp_path):
    @settings(max_examples=80, **FUZZ)
    @given(data=fs.toml_file)
    def check(data):
        with fs.time_limit(30):
            fs.check_toml(tmp_path, data)

    check()


@pytest.mark.parametrize("content, fmt, message", [
    (b"null", "json", "expected a list of records"),  # pyarrow 26's JSON reader segfaults on this file
    (b"[" * 100_000 + b"]" * 100_000, "json", "unreadable JSON"),
    (b'{"turns": ["a", "b"], "id": ' + b"1" * 5000 + b"}\n", "jsonl", "unreadable JSON"),
    (b'{"turns": ["\\ud800", "b"]}\n', "jsonl", "unpaired surrogate"),
    (b"9" * 5000 + b" hi\tthere\n", "personachat", "expected 'N text'"),
])
def test_inputs_that_used_to_crash(tmp_path, content, fmt, message):
    from cldg.data.loaders import BadLines, read_dialogues
    from cldg.errors import CldgError

    p = tmp_path / f"x.{fmt}"
    p.write_bytes(content)
    with pytest.raises(CldgError, match=message):
        list(read_dialogues(p, fmt, BadLines()))


def test_a_fifo_is_refused_instead_of_read_forever(tmp_path):
    import os

    from cldg.data.loaders import BadLines, read_dialogues
    from cldg.errors import CldgError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CldgError, match="not a regular file"):
        list(read_dialogues(fifo, "auto", BadLines()))


def test_toml_that_used_to_crash(tmp_path):
    from cldg.config import CommonOptions, config_from_table, load_toml
    from cldg.errors import CldgError

    for text, message in ((b"a = " + b"1" * 5000, "invalid TOML"), (b"a = " + b"[" * 100_000, "invalid TOML")):
        (tmp_path / "c.toml").write_bytes(text)
        with pytest.raises(CldgError, match=message):
            load_toml(tmp_path / "c.toml")
    with pytest.raises(CldgError, match="not a usable path"):
        config_from_table(CommonOptions, {"workdir": "a\x00b"}, "c.toml")
    with pytest.raises(CldgError, match="too large for a float"):
        from cldg.stages.pretrain import Config

        config_from_table(Config, {"lr": 10 ** 400}, "c.toml [pretrain]")
