"""`cldg status`: every artifact in a workdir as a rich table (or JSON)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from cldg.artifacts import ArtifactStore
from cldg.errors import CldgError
from cldg.progress import console


def collect_status(workdir: Path) -> list[dict]:
    rows = []
    for stage, fp, path, complete, manifest in ArtifactStore(workdir).list_artifacts():
        row = {"stage": stage, "fingerprint": fp, "path": str(path),
               "state": "complete" if complete else "in progress", "latest": False}
        if manifest:
            row.update(latest=manifest.get("_latest", False), created=manifest.get("created"),
                       rows=manifest.get("rows", {}), seconds=manifest.get("timings", {}).get("total_s"),
                       schema=manifest.get("schema"))
        rows.append(row)
    return rows


def show_status(workdir: Path, as_json: bool = False) -> None:
    if not workdir.is_dir():
        raise CldgError(f"{workdir}: no such workdir (run `cldg prepare --workdir {workdir}` to start one)")
    rows = collect_status(workdir)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"cldg artifacts in {workdir}")
    for col in ("stage", "fingerprint", "state", "created", "rows", "time (s)"):
        table.add_column(col)
    for r in rows:
        state = ("[green]complete[/]" + (" (latest)" if r["latest"] else "")) if r["state"] == "complete" \
            else "[yellow]in progress[/]"
        rows_txt = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in r.get("rows", {}).items())
        table.add_row(r["stage"], r["fingerprint"], state, str(r.get("created") or ""), rows_txt,
                      f"{r['seconds']:.1f}" if r.get("seconds") is not None else "")
    if not rows:
        console.print(f"{workdir}: no artifacts yet")
    else:
        console.print(table)
