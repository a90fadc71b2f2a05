"""Corpus readers: every supported source becomes a stream of `Dialogue`s.

Formats (`--format`):
- chitchat: the Chit-Chat Challenge corpus shipped by the `chitchat-dataset` package (offline).
- jsonl: one JSON object a line, `{"turns": [str, ...]}` (a dialogue) or
  `{"context": [str, ...], "response": str}` (one pair). Read line by line so that an error names
  its line; `id` is optional.
- json: the same records as a list, `{"dialogues": [...]}` or one record (Python's json: pyarrow's
  JSON reader crashes the process on some valid JSON); parquet: the same records, through HF `datasets`.
- personachat: ParlAI text format (`N partner-utterance<TAB>response<TAB><TAB>candidates`,
  N restarting at 1 for a new dialogue, `your persona:` lines skipped).
- dailydialog: a dialogue a line, turns separated by `__eou__`.
- opensubtitles: a turn a line, a blank line between dialogues.
- douban: `label<TAB>turn<TAB>...<TAB>response`; only label-1 lines are dialogues (the others are
  the corpus's negative candidates).

A malformed record raises `CldgError("FILE:LINE: what is wrong")`, unless a `BadLines` collector is
given (`--skip-bad-lines`), which records every skipped line and goes on. Any input file ends in
dialogues or in one such line: lines are read at most `max_line_bytes` at a time, deeply nested or
huge-number JSON, lone surrogates and unreadable files are bad input, not crashes (fuzzed with
hypothesis: tests/test_fuzz_readers.py, bench/fuzz_readers.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cldg.choices import CORPUS_FORMATS as FORMATS
from cldg.errors import CldgError

_WS = re.compile(r"\s+")


def normalize_turn(text: str) -> str:
    """Collapse whitespace; keep case (the tokenizer lowercases)."""
    return _WS.sub(" ", text).strip()


@dataclass
class Dialogue:
    id: str
    turns: list[str]
    pair_only: bool = False  # a {"context", "response"} record: only the last turn is a response


@dataclass
class BadLines:
    """Collects skipped lines under --skip-bad-lines; without it the first bad line stops the stage."""

    skip: bool = False
    lines: list[str] = field(default_factory=list)

    def report(self, where: str, what: str) -> None:
        if not self.skip:
            raise CldgError(f"{where}: {what}")
        self.lines.append(f"{where}: {what}")


def detect_format(path: Path) -> str:
    """Guess the format from the extension, then from the first non-empty line."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise CldgError(f"{path}: is a directory; give a file (or --format chitchat with no --input)")
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".parquet":
        return "parquet"
    with open(path, "rb") as fh:
        head = fh.read(65536).decode("utf-8", errors="replace")
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    if "__eou__" in first:
        return "dailydialog"
    if re.match(r"^1 (your persona:|partner's persona:|\S)", first) and "\t" in head:
        return "personachat"
    if re.match(r"^[01]\t", first):
        return "douban"
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "opensubtitles"


def _raw_lines(fh, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(line, length) for each line, never holding more than max_line_bytes + 1 bytes of one line: an
    over-long line comes back cut (its true length beside it) and the rest of it is skipped."""
    while True:
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        n = len(raw)
        if n > max_line_bytes and not raw.endswith(b"\n"):
            while True:  # skip the rest of the line in bounded reads
                more = fh.readline(1 << 20)
                n += len(more)
                if not more or more.endswith(b"\n"):
                    break
        yield raw, n


def _text_lines(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; non-UTF-8 bytes and over-long lines are bad lines."""
    with open(path, "rb") as fh:
        for lineno, (raw, n) in enumerate(_raw_lines(fh, max_line_bytes), 1):
            if n > max_line_bytes:
                bad.report(f"{path}:{lineno}", f"line is {n:,} bytes, over --max-line-bytes {max_line_bytes:,}")
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                bad.report(f"{path}:{lineno}", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            yield lineno, text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # drop a BOM


def _valid_text(texts: list[str]) -> bool:
    """No lone surrogates (JSON can escape them; they cannot be written as UTF-8)."""
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record_to_dialogue(rec: object, where: str, default_id: str, bad: BadLines) -> Dialogue | None:
    if not isinstance(rec, dict):
        bad.report(where, f"expected a JSON object, got {type(rec).__name__}")
        return None
    did = rec.get("id", rec.get("dialogue_id", default_id))
    try:
        did = str(did)
    except (ValueError, RecursionError):
        did = default_id
    if not _valid_text([did]):
        did = default_id
    if "turns" in rec:
        turns = rec["turns"]
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            bad.report(where, "'turns' must be a list of strings")
            return None
        if not _valid_text(turns):
            bad.report(where, "a turn holds an unpaired surrogate (\\ud800-\\udfff), which is not text")
            return None
        return Dialogue(did, [normalize_turn(t) for t in turns])
    if "response" in rec:
        ctx, resp = rec.get("context", []), rec["response"]
        if isinstance(ctx, str):
            ctx = [ctx]
        if not isinstance(ctx, list) or not all(isinstance(t, str) for t in ctx) or not isinstance(resp, str):
            bad.report(where, "'context' must be a list of strings and 'response' a string")
            return None
        if not _valid_text(ctx + [resp]):
            bad.report(where, "a turn holds an unpaired surrogate (\\ud800-\\udfff), which is not text")
            return None
        return Dialogue(did, [normalize_turn(t) for t in ctx] + [normalize_turn(resp)], pair_only=True)
    bad.report(where, "missing field: a record needs 'turns', or 'context' and 'response'")
    return None


def read_jsonl(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    for lineno, line in _text_lines(path, bad, max_line_bytes):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.report(f"{path}:{lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits; nesting too deep
            bad.report(f"{path}:{lineno}", f"unreadable JSON ({_first_line(exc)})")
            continue
        d = _record_to_dialogue(rec, f"{path}:{lineno}", f"{path.stem}-{lineno}", bad)
        if d is not None:
            yield d


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)


def read_json(path: Path, bad: BadLines) -> Iterator[Dialogue]:
    """A JSON file: a list of records, {"dialogues": [records]}, or one record. Parsed with Python's json
    (the file has to be parsed whole anyway): pyarrow 26's JSON reader, which HF `datasets` uses,
    crashes the process on some valid JSON (a file holding just `null`)."""
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CldgError(f"{path}: invalid JSON ({_first_line(exc)})") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits; nesting too deep
        raise CldgError(f"{path}: unreadable JSON ({_first_line(exc)})") from None
    if isinstance(doc, dict) and "dialogues" in doc:
        records = doc["dialogues"]
        if not isinstance(records, list):
            raise CldgError(f"{path}: 'dialogues' must be a list of records, got {type(records).__name__}")
    elif isinstance(doc, list):
        records = doc
    elif isinstance(doc, dict):
        records = [doc]
    else:
        raise CldgError(f"{path}: expected a list of records or {{\"dialogues\": [...]}}, got {type(doc).__name__}")
    del doc
    for i, rec in enumerate(records):
        if isinstance(rec, dict):
            rec = {k: v for k, v in rec.items() if v is not None}
        d = _record_to_dialogue(rec, f"{path}:record {i + 1}", f"{path.stem}-{i + 1}", bad)
        if d is not None:
            yield d


def read_with_datasets(path: Path, fmt: str, bad: BadLines) -> Iterator[Dialogue]:
    """Parquet through HF `datasets` (offline; the file is local). The arrow cache goes to a temporary
    folder (removed once read), not ~/.cache, which would keep a copy of every corpus read."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error log would repeat our one line
    try:
        with tempfile.TemporaryDirectory(prefix="cldg-datasets-") as cache_dir:
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache_dir,
                                       keep_in_memory=True)
            records = ds.to_list()
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise CldgError(f"{path}: cannot read as {fmt}: {_first_line(exc)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    for i, rec in enumerate(records):
        rec = {k: v for k, v in rec.items() if v is not None}
        d = _record_to_dialogue(rec, f"{path}:record {i + 1}", f"{path.stem}-{i + 1}", bad)
        if d is not None:
            yield d


def read_personachat(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    turns: list[str] = []
    n_dialogue, last_n = 0, 0
    for lineno, line in _text_lines(path, bad, max_line_bytes):
        if not line.strip():
            continue
        m = re.match(r"^([0-9]{1,9}) (.*)$", line)
        if not m:
            bad.report(f"{path}:{lineno}", "expected 'N text' (ParlAI PersonaChat format)")
            continue
        n, rest = int(m.group(1)), m.group(2)
        if n <= last_n and turns:
            n_dialogue += 1
            yield Dialogue(f"{path.stem}-{n_dialogue}", turns)
            turns = []
        last_n = n
        if rest.startswith(("your persona:", "partner's persona:")):
            continue
        parts = rest.split("\t")
        if len(parts) < 2:
            bad.report(f"{path}:{lineno}", "expected 'partner utterance<TAB>response'")
            continue
        if parts[0].strip() != "__SILENCE__":
            turns.append(normalize_turn(parts[0]))
        turns.append(normalize_turn(parts[1]))
    if turns:
        yield Dialogue(f"{path.stem}-{n_dialogue + 1}", turns)


def read_dailydialog(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    for lineno, line in _text_lines(path, bad, max_line_bytes):
        if not line.strip():
            continue
        if "__eou__" not in line:
            bad.report(f"{path}:{lineno}", "no '__eou__' separator (DailyDialog format)")
            continue
        turns = [normalize_turn(t) for t in line.split("__eou__")]
        yield Dialogue(f"{path.stem}-{lineno}", [t for t in turns if t] if turns[-1] == "" else turns)


def read_opensubtitles(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    turns: list[str] = []
    start = 1
    for lineno, line in _text_lines(path, bad, max_line_bytes):
        if not line.strip():
            if turns:
                yield Dialogue(f"{path.stem}-{start}", turns)
            turns, start = [], lineno + 1
            continue
        turns.append(normalize_turn(line))
    if turns:
        yield Dialogue(f"{path.stem}-{start}", turns)


def read_douban(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    for lineno, line in _text_lines(path, bad, max_line_bytes):
        if not line.strip():
            continue
        parts = line.split("\t")
        if parts[0] not in ("0", "1") or len(parts) < 3:
            bad.report(f"{path}:{lineno}", "expected 'label<TAB>turn<TAB>...<TAB>response' with label 0 or 1")
            continue
        if parts[0] == "1":
            yield Dialogue(f"{path.stem}-{lineno}", [normalize_turn(t) for t in parts[1:]])


def read_chitchat() -> Iterator[Dialogue]:
    """The Chit-Chat Challenge corpus: consecutive messages of one sender form one turn."""
    import chitchat_dataset

    for cid, conv in chitchat_dataset.Dataset().items():
        yield Dialogue(str(cid), [normalize_turn(" ".join(m["text"] for m in msgs)) for msgs in conv["messages"]])


def read_dialogues(path: Path | None, fmt: str, bad: BadLines, max_line_bytes: int = 1 << 20) -> Iterator[Dialogue]:
    """Every dialogue of the corpus at `path` (None: the chitchat corpus)."""
    if path is None or fmt == "chitchat":
        if path is not None:
            raise CldgError("--format chitchat reads the packaged corpus; leave out --input")
        yield from read_chitchat()
        return
    path = Path(path)
    try:
        if not path.exists():
            raise CldgError(f"--input {path}: no such file")
        if path.is_file() and path.stat().st_size == 0:
            raise CldgError(f"{path}:1: the file is empty")
        if not path.is_file() and not path.is_dir():  # a FIFO or a device would never end
            raise CldgError(f"--input {path}: not a regular file")
        if fmt == "auto":
            fmt = detect_format(path)
        yield from _read_format(path, fmt, bad, max_line_bytes)
    except OSError as exc:  # unreadable (permissions, I/O error): one line, not a traceback
        raise CldgError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_format(path: Path, fmt: str, bad: BadLines, max_line_bytes: int) -> Iterator[Dialogue]:
    if fmt == "jsonl":
        yield from read_jsonl(path, bad, max_line_bytes)
    elif fmt == "json":
        yield from read_json(path, bad)
    elif fmt == "parquet":
        yield from read_with_datasets(path, fmt, bad)
    elif fmt == "personachat":
        yield from read_personachat(path, bad, max_line_bytes)
    elif fmt == "dailydialog":
        yield from read_dailydialog(path, bad, max_line_bytes)
    elif fmt == "opensubtitles":
        yield from read_opensubtitles(path, bad, max_line_bytes)
    elif fmt == "douban":
        yield from read_douban(path, bad, max_line_bytes)
    else:
        raise CldgError(f"--format {fmt}: unknown (one of {', '.join(FORMATS)})")
