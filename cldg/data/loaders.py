"""Corpus readers: every supported source becomes a stream of `Dialogue`s.

Formats (`--format`):
- chitchat: the Chit-Chat Challenge corpus shipped by the `chitchat-dataset` package (offline).
- jsonl: one JSON object a line, `{"turns": [str, ...]}` (a dialogue) or
  `{"context": [str, ...], "response": str}` (one pair). Read line by line so that an error names
  its line; `id` is optional.
- json / parquet: the same records, read through HF `datasets` (a JSON file may also be a list).
- personachat: ParlAI text format (`N partner-utterance<TAB>response<TAB><TAB>candidates`,
  N restarting at 1 for a new dialogue, `your persona:` lines skipped).
- dailydialog: a dialogue a line, turns separated by `__eou__`.
- opensubtitles: a turn a line, a blank line between dialogues.
- douban: `label<TAB>turn<TAB>...<TAB>response`; only label-1 lines are dialogues (the others are
  the corpus's negative candidates).

A malformed record raises `CldgError("FILE:LINE: what is wrong")`, unless a `BadLines` collector is
given (`--skip-bad-lines`), which records every skipped line and goes on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cldg.errors import CldgError

FORMATS = ("auto", "chitchat", "jsonl", "json", "parquet", "personachat", "dailydialog", "opensubtitles", "douban")
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


def _text_lines(path: Path, bad: BadLines, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; non-UTF-8 bytes and over-long lines are bad lines."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if len(raw) > max_line_bytes:
                bad.report(f"{path}:{lineno}", f"line is {len(raw):,} bytes, over --max-line-bytes {max_line_bytes:,}")
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                bad.report(f"{path}:{lineno}", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            yield lineno, text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # drop a BOM


def _record_to_dialogue(rec: object, where: str, default_id: str, bad: BadLines) -> Dialogue | None:
    if not isinstance(rec, dict):
        bad.report(where, f"expected a JSON object, got {type(rec).__name__}")
        return None
    did = str(rec.get("id", rec.get("dialogue_id", default_id)))
    if "turns" in rec:
        turns = rec["turns"]
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            bad.report(where, "'turns' must be a list of strings")
            return None
        return Dialogue(did, [normalize_turn(t) for t in turns])
    if "response" in rec:
        ctx, resp = rec.get("context", []), rec["response"]
        if isinstance(ctx, str):
            ctx = [ctx]
        if not isinstance(ctx, list) or not all(isinstance(t, str) for t in ctx) or not isinstance(resp, str):
            bad.report(where, "'context' must be a list of strings and 'response' a string")
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
        d = _record_to_dialogue(rec, f"{path}:{lineno}", f"{path.stem}-{lineno}", bad)
        if d is not None:
            yield d


def read_with_datasets(path: Path, fmt: str, bad: BadLines) -> Iterator[Dialogue]:
    """JSON and parquet through HF `datasets` (offline; the file is local)."""
    import datasets

    datasets.disable_progress_bars()
    builder = "json" if fmt == "json" else "parquet"
    field_arg = {}
    if fmt == "json":
        try:
            with open(path, "rb") as fh:
                doc = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CldgError(f"{path}: invalid JSON ({exc})") from None
        if isinstance(doc, dict) and "dialogues" in doc:
            field_arg = {"field": "dialogues"}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **field_arg)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise CldgError(f"{path}: cannot read as {fmt}: {str(exc).splitlines()[0][:300]}") from None
    for i, rec in enumerate(ds):
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
        m = re.match(r"^(\d+) (.*)$", line)
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
    if not path.exists():
        raise CldgError(f"--input {path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise CldgError(f"{path}:1: the file is empty")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "jsonl":
        yield from read_jsonl(path, bad, max_line_bytes)
    elif fmt in ("json", "parquet"):
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
