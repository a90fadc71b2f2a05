"""`cldg status`: every artifact in a workdir, one row each (readable at 80 columns), or JSON.

The state column says what is known about each artifact without reading it whole:
- verified      every file was hashed and matched its manifest, and none has changed since (size, mtime,
                ctime and inode as remembered in WORKDIR/.verified.json)
- complete      committed, sizes match the manifest, not hashed since (or not by this cldg)
- changed?      a file was written after it was verified: `--verify` tells whether it still matches
- CORRUPT       a file is missing, has another size, or (with --verify) another sha256
- running       in progress, a cldg process holds its lock
- interrupted   in progress, nobody holds the lock: rerun the command to resume it
Below the table, each artifact in progress says how far it got, from what it has left on disk: a training's
last step and validation (train-log.jsonl), mining's pairs in finished chunks.
`--verify` hashes every file of every complete artifact again (and refreshes the cache) and exits 2
if any differs, with one line per file. `--long` adds the full fingerprint, path, row counts, files and
sizes; `--json` prints all of it as JSON.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from rich import box
from rich.table import Table

from cldg.artifacts import MANIFEST, RUN_RECORD, VerifiedCache, artifact_problems, flock_held
from cldg.filestat import stat_key
from cldg.errors import CldgError, CorruptArtifactError
from cldg.progress import console, results
from cldg.stages import ARTIFACT_ORDER


def _partial_state(path: Path, fp: str) -> str:
    locks = [path.parent / f".{fp}.lock", path / ".lock", *sorted(path.glob(".shard-*.lock"))]
    return "running" if any(p.exists() and flock_held(p) for p in locks) else "interrupted"


def _scorable_best(path: Path) -> int | None:
    """The step of a training's best checkpoint so far, when `cldg evaluate --model PATH` can score it."""
    resume = path / "resume"
    if not (resume / "model.json").is_file() or not (path / RUN_RECORD).is_file():
        return None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return int(json.loads((resume / "best.json").read_text())["step"])
    return None


def _partial_progress(path: Path) -> str | None:
    """How far an artifact in progress got, from its files: a training's last logged step and validations
    (the tail of train-log.jsonl), or mining's pairs in finished chunks; None when it left neither."""
    log = path / "train-log.jsonl"
    if log.is_file():
        records = []
        with contextlib.suppress(OSError), open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 256 * 1024))  # the tail: a long run's log is large
            for line in fh.read().decode("utf-8", "replace").splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                        records.append(rec)
        if not records:
            return None
        text = f"step {max(r['step'] for r in records):,}"
        checks = [r for r in records if r.get("type") == "valid" and isinstance(r.get("criterion"), (int, float))]
        if checks:
            last = checks[-1]
            value = f"ppl {last['ppl']:.1f}" if isinstance(last.get("ppl"), (int, float)) else \
                f"criterion {last['criterion']:.4g}"
            trained = f", {_duration(last['elapsed_s'])} trained" if isinstance(last.get("elapsed_s"), (int, float)) \
                else ""  # logs of older runs hold no elapsed_s
            text += f"; valid {value} at step {last['step']:,} (epoch {int(last.get('epoch', 0)) + 1}{trained})"
            stale = 0
            for r in reversed(checks):
                if r.get("improved", True):
                    break
                stale += 1
            text += f", {stale} check{'s' * (stale != 1)} without improvement" if stale else ", improving"
        return text
    chunks = [p.name.split("-chunk-")[1].removesuffix(".parquet").split("-") for p in path.glob(".shard-*-chunk-*.parquet")]
    pairs = sum(int(b) - int(a) for a, b in chunks if a.isdigit() and b.isdigit())
    shards = len(list(path.glob("shard-*-of-*.parquet")))
    if pairs or shards:
        return ", ".join(x for x in (f"{pairs:,} pairs mined in chunks" if pairs else "",
                                     f"{shards} shard{'s' * (shards != 1)} done" if shards else "") if x)
    return None


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _check_complete(path: Path, manifest: dict, verify: bool, entries: dict) -> tuple[str, list[str]]:
    """(state, problems) of a complete artifact: cheap checks, or every file hashed again (verify)."""
    if manifest.get("_unreadable"):
        return "CORRUPT", [f"{path / MANIFEST}: unreadable manifest - rebuild the artifact"]
    if verify:
        problems = artifact_problems(path, manifest, full=True)
        return ("CORRUPT" if problems else "verified"), problems
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        return "CORRUPT", [f"{path / MANIFEST}: 'files' is not a table of files"]
    problems, trusted, changed = [], 0, 0
    prefix = f"{path.parent.name}/{path.name}/"
    for rel, info in sorted(files.items()):
        f = path / rel
        try:
            st = f.stat()
        except OSError:
            problems.append(f"{f}: missing (listed in {path / MANIFEST})")
            continue
        size = info.get("bytes") if isinstance(info, dict) else None
        if size is not None and st.st_size != size:
            problems.append(f"{f}: {st.st_size:,} bytes, {path / MANIFEST} says {size:,}")
            continue
        e = entries.get(prefix + rel)
        if isinstance(e, list) and len(e) == 6 and e[4] == (info or {}).get("sha256"):
            now = stat_key(st)
            if e[:4] == now:
                trusted += 1
            elif e[:2] != now[:2]:  # written since (a copy or restore only moves ctime and inode)
                changed += 1
    if problems:
        return "CORRUPT", problems
    if changed:
        return "changed?", []
    return ("verified" if files and trusted == len(files) else "complete"), []


STAGE_ORDER = ARTIFACT_ORDER


def collect_status(workdir: Path, verify: bool = False) -> list[dict]:
    from cldg.artifacts import ArtifactStore

    entries = VerifiedCache(workdir).load()
    rows = []
    for stage, fp, path, complete, manifest in ArtifactStore(workdir).list_artifacts():
        row = {"stage": stage, "fingerprint": fp, "path": str(path),
               "state": "complete" if complete else "in progress", "latest": False}
        if complete and manifest is not None:
            check, problems = _check_complete(path, manifest, verify, entries)
            files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
            row.update(latest=manifest.get("_latest", False), created=manifest.get("created"),
                       rows=manifest.get("rows", {}), seconds=(manifest.get("timings") or {}).get("total_s"),
                       schema=manifest.get("schema"), check=check, problems=problems, files=len(files),
                       bytes=sum(int(i.get("bytes", 0)) for i in files.values() if isinstance(i, dict)))
            if check == "CORRUPT":
                row["state"] = "corrupt"
        else:
            row.update(check=_partial_state(path, fp), problems=[], bytes=_dir_bytes(path),
                       progress=_partial_progress(path))
        rows.append(row)
    rows.sort(key=lambda r: (STAGE_ORDER.index(r["stage"]) if r["stage"] in STAGE_ORDER else len(STAGE_ORDER),
                             r["stage"], r.get("created") or "~", r["fingerprint"]))
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _duration(s: float | None) -> str:
    if s is None:
        return ""
    s = float(s)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _created(value: str | None) -> str:
    return (value or "")[:16].replace("T", " ")


STATE_STYLE = {"verified": "green", "complete": "green", "changed?": "yellow", "CORRUPT": "bold red",
               "running": "cyan", "interrupted": "yellow"}


def status_table(workdir: Path, rows: list[dict]) -> Table:
    """One row per artifact; the widest row is about 70 columns (short fingerprints, no counts)."""
    table = Table(title=f"cldg artifacts in {workdir}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="* latest   --long/--json: details   --verify: hash every file",
                  caption_justify="left", title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("artifact", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for r in rows:
        check = r.get("check", "")
        style = STATE_STYLE.get(check, "")
        table.add_row(r["stage"], r["fingerprint"][:8] + ("*" if r.get("latest") else " "),
                      f"[{style}]{check}[/]" if style else check, _created(r.get("created")),
                      _size(r.get("bytes")), _duration(r.get("seconds")))
    return table


def print_long(workdir: Path, rows: list[dict]) -> None:
    results.print(f"[bold]cldg artifacts in {workdir}[/]", highlight=False)
    for r in rows:
        check = r.get("check", "")
        style = STATE_STYLE.get(check, "")
        flags = ", latest" if r.get("latest") else ""
        results.print(f"\n[bold]{r['stage']}/{r['fingerprint']}[/]  [{style}]{check}[/]{flags}", highlight=False)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("  path", r["path"])
        if r["state"] != "in progress":
            grid.add_row("  created", f"{r.get('created') or '?'}, took {_duration(r.get('seconds')) or '?'}")
            grid.add_row("  files", f"{r.get('files', 0)}, {_size(r.get('bytes'))}, schema {r.get('schema')}")
            counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                               for k, v in (r.get("rows") or {}).items())
            if counts:
                grid.add_row("  rows", counts)
        else:
            grid.add_row("  so far", ", ".join(x for x in (_size(r.get("bytes")), r.get("progress")) if x))
            best = _scorable_best(Path(r["path"]))
            if best is not None:
                grid.add_row("  score it", f"cldg evaluate --model {r['path']}  (its best checkpoint, step {best:,})")
        for p in r.get("problems", []):
            grid.add_row("  [red]corrupt[/]", p)
        results.print(grid, highlight=False)


def show_status(workdir: Path, as_json: bool = False, verify: bool = False, long: bool = False) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise CldgError(f"{workdir}: a file, not a workdir (a folder of artifacts)")
    if not workdir.is_dir():
        raise CldgError(f"{workdir}: no such workdir (run `cldg prepare --workdir {workdir}` to start one)")
    rows = collect_status(workdir, verify=verify)
    problems = [p for r in rows for p in r.get("problems", [])]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        results.print(f"{workdir}: no artifacts yet")
    elif long:
        print_long(workdir, rows)
    else:
        results.print(status_table(workdir, rows))
        for r in rows:
            if r.get("progress"):
                results.print(f"{r['stage']} {r['fingerprint'][:8]}: {r['progress']}", highlight=False)
    if problems:
        if not as_json and not long:
            for p in problems[:-1]:
                console.print(f"[bold red]corrupt:[/] {p}", highlight=False, soft_wrap=True)
        if len(problems) == 1 or as_json or long:
            n_art = sum(1 for r in rows if r.get("problems"))
            raise CorruptArtifactError(problems[0] if len(problems) == 1 else
                                       f"{len(problems)} files in {n_art} artifacts differ from their manifests "
                                       f"(first: {problems[0]})")
        raise CorruptArtifactError(problems[-1])
