"""Hypothesis strategies for fuzzing the corpus readers and the TOML config (tests and bench/fuzz_readers.py).

Every strategy gives the bytes of one input file. Each mixes well-formed files of the format, the same
with random edits (flipped, inserted, deleted bytes, cut short), and plain random bytes and text, so
that both the parsers' happy paths and their error paths are hit.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from cldg.data.loaders import BadLines, read_dialogues
from cldg.errors import CldgError

READERS = ("jsonl", "json", "parquet", "personachat", "dailydialog", "opensubtitles", "douban", "auto")

# fragments that mean something to one reader or another
SPECIAL = ["__eou__", "\t", "\n", "\r\n", "\r", " ", "  ", "__SILENCE__", "your persona:", "partner's persona:",
           "1 ", "0\t", "1\t", "{", "}", "[", "]", '"', "\\", "\x00", "\ufeff", "\u2028", "\u00a0", "é", "你好",
           "\ud7ff", "😀", "|", ":", ",", "turns", "context", "response", "dialogues", "id", "null", "1e999",
           "9" * 5000]

_chars = st.characters(codec="utf-8")  # any encodable code point (no lone surrogates)
word = st.one_of(st.text(_chars, max_size=12), st.sampled_from(SPECIAL))
turn = st.lists(word, max_size=6).map("".join)
turns = st.lists(turn, max_size=6)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with up to 4 random edits."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "dup"]))
        pos = draw(st.integers(0, max(len(out), 1) - 1)) if out else 0
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[pos:pos] = draw(st.sampled_from([b"\xff", b"\n", b"\t", b"\x00", b"\xc3", b"__eou__", b'"', b"{",
                                                 b"\xed\xa0\x80", b"\r"]))
        elif op == "delete" and out:
            del out[pos:pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del out[pos:]
        elif op == "dup" and out:
            out[pos:pos] = out[pos:pos + draw(st.integers(1, 64))]
    return bytes(out)


def _maybe_mutated(strategy):
    return strategy.flatmap(lambda b: st.one_of(st.just(b), mutated(b)))


def _lines(line_strategy, blank=0.0):
    return st.lists(line_strategy, max_size=12).map(lambda ls: "\n".join(ls) + "\n")


def _encode(text_strategy):
    return text_strategy.map(lambda s: s.encode("utf-8"))


anything = st.one_of(st.binary(max_size=400), _encode(st.text(_chars, max_size=200)),
                     _encode(st.lists(word, max_size=40).map("".join)))

# -- line formats ------------------------------------------------------------------------------------
number = st.one_of(st.integers(0, 30).map(str), st.sampled_from(["", "-1", "٣", "1" * 40, "9" * 5000, "01"]))
persona_line = st.one_of(
    st.tuples(number, turn, turn, st.lists(turn, max_size=3)).map(
        lambda t: f"{t[0]} {t[1]}\t{t[2]}\t\t{'|'.join(t[3])}"),
    st.tuples(number, st.sampled_from(["your persona:", "partner's persona:"]), turn).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.tuples(number, turn).map(lambda t: f"{t[0]} {t[1]}"),
    turn)
personachat = _maybe_mutated(_encode(_lines(persona_line)))

daily_line = st.one_of(st.tuples(turns, st.booleans()).map(lambda t: " __eou__ ".join(t[0]) + (" __eou__" if t[1] else "")),
                       turn)
dailydialog = _maybe_mutated(_encode(_lines(daily_line)))

opensubtitles = _maybe_mutated(_encode(st.lists(st.one_of(turn, st.just("")), max_size=20).map(
    lambda ls: "\n".join(ls) + "\n")))

douban_line = st.one_of(st.tuples(st.sampled_from(["0", "1", "2", "", "1 ", "10"]), turns).map(
    lambda t: t[0] + "\t" + "\t".join(t[1])), turn)
douban = _maybe_mutated(_encode(_lines(douban_line)))

# -- JSON --------------------------------------------------------------------------------------------
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
                        turn)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
record = st.one_of(
    st.fixed_dictionaries({"turns": turns}, optional={"id": json_scalar}),
    st.fixed_dictionaries({"context": st.one_of(turns, turn), "response": turn}, optional={"id": json_scalar}),
    st.fixed_dictionaries({"turns": json_value}),
    st.fixed_dictionaries({"context": json_value, "response": json_value}),
    st.dictionaries(st.sampled_from(["turns", "context", "response", "id", "dialogue_id", "x"]), json_value,
                    max_size=4),
    json_value)
# strings JSON cannot round-trip through a Python str: lone surrogates, huge numbers, deep nesting
raw_json = st.sampled_from(['{"turns": ["\\ud800", "b"]}', '{"context": ["\\udfff"], "response": "x"}',
                            '{"turns": ["a", "b"], "id": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
                            '{"turns": ' + "[" * 5000 + "]" * 5000 + "}", "1" * 5000, "NaN", "-Infinity",
                            '{"turns": ["a", "b"], "id": "\\ud83d"}'])



jsonl_line = st.one_of(record.map(lambda r: json.dumps(r)), raw_json, turn)
jsonl = _maybe_mutated(_encode(_lines(jsonl_line)))

json_doc = st.one_of(
    st.lists(record, max_size=6).map(json.dumps),
    st.lists(record, max_size=6).map(lambda rs: json.dumps({"dialogues": rs})),
    st.dictionaries(st.sampled_from(["dialogues", "data", "turns"]), json_value, max_size=2).map(json.dumps),
    json_value.map(json.dumps),
    raw_json)
json_file = st.one_of(_maybe_mutated(_encode(json_doc)), anything)


# -- parquet -----------------------------------------------------------------------------------------
def _table_bytes(columns: dict[str, list]) -> bytes | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.table(columns)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return None
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


column_values = st.one_of(
    st.lists(st.one_of(st.none(), turns), min_size=1, max_size=4),
    st.lists(st.one_of(st.none(), turn), min_size=1, max_size=4),
    st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=4),
    st.lists(st.floats(), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(0, 9), max_size=3), min_size=1, max_size=4),
    st.lists(st.fixed_dictionaries({"a": turn}), min_size=1, max_size=4))


@st.composite
def parquet_table(draw) -> bytes:
    n = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(["turns", "context", "response", "id", "x"]), min_size=1, max_size=3,
                          unique=True))
    cols = {}
    for name in names:
        values = draw(column_values)
        cols[name] = (values * n)[:n]
    data = _table_bytes(cols)
    if data is None:
        data = _table_bytes({"turns": [["a", "b"]] * n})
    return data


parquet_file = st.one_of(_maybe_mutated(parquet_table()), parquet_table(), anything)

STRATEGIES = {
    "jsonl": jsonl,
    "json": json_file,
    "parquet": parquet_file,
    "personachat": personachat,
    "dailydialog": dailydialog,
    "opensubtitles": opensubtitles,
    "douban": douban,
}
EXTENSIONS = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "personachat": ".txt",
              "dailydialog": ".txt", "opensubtitles": ".txt", "douban": ".tsv"}
# auto-detection: any of the above, under any of the extensions
auto_file = st.tuples(st.one_of(*STRATEGIES.values(), anything),
                      st.sampled_from(["", ".txt", ".jsonl", ".json", ".parquet", ".tsv", ".ndjson"]))


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise Hang if the block runs longer than `seconds` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_reader(directory: Path, reader: str, data: bytes, ext: str | None = None, skip: bool = False,
                 max_line_bytes: int = 1 << 20) -> str:
    """Read `data` as `reader`: 'ok' (dialogues) or 'error' (one clean CldgError line). Anything else
    (another exception, a message of several lines, a bad dialogue) raises AssertionError."""
    fmt = "auto" if reader == "auto" else reader
    path = Path(directory) / f"input{ext if ext is not None else EXTENSIONS.get(reader, '.txt')}"
    path.write_bytes(data)
    bad = BadLines(skip=skip)
    try:
        dialogues = list(read_dialogues(path, fmt, bad, max_line_bytes=max_line_bytes))
    except CldgError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 2000, f"not one clear line: {msg!r}"
        return "error"
    for d in dialogues:
        assert isinstance(d.id, str) and isinstance(d.turns, list), d
        for t in d.turns:
            assert isinstance(t, str), d
            t.encode("utf-8")  # writable as UTF-8 (parquet, tokenizer)
            assert "\n" not in t and "\t" not in t, d
    for line in bad.lines:
        assert "\n" not in line, line
    return "ok"


# -- TOML ----------------------------------------------------------------------------------------------
def stage_tables() -> dict[str, type]:
    """TOML table name -> the stage's config class (every stage the CLI has)."""
    from cldg.stages import STAGES, stage_module

    return {s.table: stage_module(s).Config for s in STAGES}


TABLES = stage_tables()  # imported here, not while hypothesis draws (imports may touch `random`)


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


toml_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=12),
                        st.sampled_from(["cpu", "auto", "msn", "bm25", "eq4", "greedy", "seq2seq", "x/y.jsonl", ""]))
toml_value = st.recursive(toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=6)


@st.composite
def toml_document(draw) -> bytes:
    """A TOML config: real table and option names (and some wrong ones) with values of any type, or
    random edits of one, or random bytes."""
    from cldg.config import CommonOptions

    tables = TABLES
    common = [f.name for f in dataclasses.fields(CommonOptions)]
    lines = []
    for k in draw(st.lists(st.sampled_from(common + ["seeds", "x"]), max_size=3, unique=True)):
        lines.append(f"{_toml_key(k)} = {_toml_value(draw(toml_value))}")
    for table in draw(st.lists(st.sampled_from(sorted(tables) + ["run", "pretrian", "x y"]), max_size=3, unique=True)):
        lines.append(f"[{_toml_key(table)}]")
        names = [f.name for f in dataclasses.fields(tables[table])] if table in tables else ["k"]
        for k in draw(st.lists(st.sampled_from(names + ["unknown_key"]), max_size=4, unique=True)):
            lines.append(f"{_toml_key(k)} = {_toml_value(draw(toml_value))}")
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


raw_toml = st.sampled_from([b"a = " + b"1" * 5000, b"a = " + b"[" * 100_000, b"[prepare]\nvector_dim = 1e999\n",
                            b"[prepare]\ninput = \"a\\u0000b\"\n", b"prepare = 3\n", b"[prepare]\n[prepare]\n",
                            b"workdir = 5\n", b"\xff\xfe", b"[evaluate]\nlimit = 99999999999999999999\n"])
toml_file = st.one_of(toml_document(), _maybe_mutated(toml_document()), raw_toml, anything)


class _Ctx:
    """Stands in for typer's context: no option was given on the command line."""

    def get_parameter_source(self, name):
        return None


def check_toml(directory: Path, data: bytes) -> str:
    """Load `data` as a --config for every stage as the CLI does: 'ok' or 'error' (one clean line)."""
    from cldg.cli import STAGES, load_common_and_config
    from cldg.config import CommonOptions

    path = Path(directory) / "config.toml"
    path.write_bytes(data)
    tables = TABLES
    outcome = "ok"
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                for f in dataclasses.fields(CommonOptions)}
    for _, _, table in STAGES:
        try:
            common, cfg = load_common_and_config(_Ctx(), tables[table], table, defaults | {"config": path})
            assert isinstance(common, CommonOptions) and isinstance(cfg, tables[table])
        except CldgError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 2000, f"not one clear line: {msg!r}"
            outcome = "error"
    return outcome
