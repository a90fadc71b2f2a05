"""Blind A/B human evaluation (the paper's Table 4): export sheets, score the filled ones.

`export_sheets` samples N test contexts shared by two evaluate runs, shows each pair of responses in
a random order as "response 1 / response 2" (which system is which is kept in `key.json`, apart from
the sheet), and writes `sheet.csv` for annotators to fill with 1, 2 or tie in the `preference`
column. `score_sheets` reads several annotators' filled copies and reports win / loss / tie of system
A against B per annotator and overall (majority vote), and Cohen's kappa between each two annotators.
"""
from __future__ import annotations

import csv
import json
import random
from itertools import combinations
from pathlib import Path

from cldg.errors import CldgError

FIELDS = ["item", "context", "response 1", "response 2", "preference"]
CHOICES = {"1", "2", "tie"}


def _generations(run: Path) -> dict[int, dict]:
    from cldg.artifacts import Artifact

    art = Artifact.load(Path(run))
    if art.stage != "eval":
        raise CldgError(f"{run}: a '{art.stage}' artifact, not an evaluate run")
    out = {}
    path = art.file("generations.jsonl")
    if not path.is_file():
        raise CldgError(f"{run}: evaluate artifact without generations.jsonl")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            g = json.loads(line)
            out[int(g["pair_id"])] = g
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CldgError(f"{path}:{lineno}: not a generation record (JSON with pair_id)") from None
    return out


def export_sheets(run_a: Path, run_b: Path, n: int, out_dir: Path, seed: int, force: bool = False) -> dict:
    from cldg.progress import console

    if n < 1:
        raise CldgError(f"human-eval export: -n {n}: need at least one item")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CldgError(f"--out {out_dir}: is a file, not a folder")
    a, b = _generations(run_a), _generations(run_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise CldgError(f"{run_a} and {run_b} share no test pairs")
    rng = random.Random(seed)
    chosen = rng.sample(shared, min(n, len(shared)))
    key = {"system_a": str(run_a), "system_b": str(run_b), "items": {}}
    rows = []
    for item, pid in enumerate(chosen, 1):
        a_first = rng.random() < 0.5
        first, second = (a[pid], b[pid]) if a_first else (b[pid], a[pid])
        context = " / ".join(a[pid]["context"])
        rows.append([item, context, first["generated"], second["generated"], ""])
        # the context and responses too: score checks that a sheet is this key's (not one exported with another
        # seed), and an export of rebuilt evaluations (other responses) is not taken for this one
        key["items"][str(item)] = {"pair_id": pid, "response_1": "A" if a_first else "B", "context": context,
                                   "responses": [first["generated"], second["generated"]]}
    result = {"sheet": str(out_dir / "sheet.csv"), "key": str(out_dir / "key.json"), "items": len(chosen)}
    there = [p for p in (out_dir / "sheet.csv", out_dir / "key.json") if p.exists()]
    if there and not force:
        try:
            same = json.loads((out_dir / "key.json").read_text()) == key
        except (OSError, ValueError):
            same = False
        if same:  # the same export again (a rerun of `cldg run`): keep the sheet, perhaps being filled in place
            console.print(f"human-eval: {out_dir / 'key.json'} is this export's key already - sheets kept")
            return result
        # sheets handed out against that key would score against a new one without a word
        raise CldgError(f"--out {out_dir}: already holds {' and '.join(p.name for p in there)} of another export - "
                        "choose another folder, or --force to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CldgError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    with open(out_dir / "sheet.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        w.writerows(rows)
    (out_dir / "key.json").write_text(json.dumps(key, indent=2))
    console.print(f"human-eval: {len(chosen)} items in {out_dir / 'sheet.csv'}; the key is {out_dir / 'key.json'} "
                  "(keep it away from annotators). Fill 'preference' with 1, 2 or tie.")
    return result


def read_sheet(path: Path, key: dict) -> dict[str, str]:
    """item -> 'A' | 'B' | 'tie' (which system the annotator preferred)."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "preference" not in reader.fieldnames or "item" not in reader.fieldnames:
                raise CldgError(f"{path}:1: header must contain 'item' and 'preference'")
            for row in reader:
                line = reader.line_num
                if None in row:  # more cells than the header has columns (an unquoted comma?)
                    raise CldgError(f"{path}:{line}: more cells than the header has columns")
                item, pref = (row.get("item") or "").strip(), (row.get("preference") or "").strip().lower()
                if item not in key["items"]:
                    raise CldgError(f"{path}:{line}: item {item!r} is not in the key")
                if item in out:
                    raise CldgError(f"{path}:{line}: item {item} appears twice")
                expected = key["items"][item].get("context")  # keys before 2026-12-01 do not hold it
                if expected is not None and "context" in row and (row["context"] or "").strip() != expected.strip():
                    raise CldgError(f"{path}:{line}: item {item}'s context is not the key's - this sheet was exported "
                                    "with another key (another seed or pair of runs)")
                if pref not in CHOICES:
                    raise CldgError(f"{path}:{line}: preference {pref!r} must be 1, 2 or tie")
                first = key["items"][item]["response_1"]
                out[item] = "tie" if pref == "tie" else (first if pref == "1" else ("B" if first == "A" else "A"))
    except FileNotFoundError:
        raise CldgError(f"{path}: no such sheet") from None
    except UnicodeDecodeError:
        raise CldgError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CldgError(f"{path}: not a CSV sheet ({exc})") from None
    if not out:
        raise CldgError(f"{path}: no filled rows")
    return out


def _wlt(labels: list[str]) -> dict[str, float]:
    n = max(len(labels), 1)
    return {"win": labels.count("A") / n, "loss": labels.count("B") / n, "tie": labels.count("tie") / n,
            "items": len(labels)}


def score_sheets(sheets: list[Path], key_path: Path, as_json: bool) -> dict:
    from rich.table import Table

    from cldg.metrics.stats import cohens_kappa
    from cldg.progress import console, results

    try:
        key = json.loads(Path(key_path).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise CldgError(f"--key {key_path}: cannot read the key ({exc})") from None
    if not isinstance(key, dict) or not isinstance(key.get("items"), dict) or "system_a" not in key:
        raise CldgError(f"--key {key_path}: not a key written by `cldg human-eval export`")
    if not sheets:
        raise CldgError("human-eval score: give at least one filled sheet")
    labels = [read_sheet(Path(s), key) for s in sheets]
    items = sorted(set.intersection(*(set(x) for x in labels)), key=int)
    if not items:
        raise CldgError("the sheets have no item in common")
    names = [str(s) for s in sheets]
    if len(set(names)) < len(names):
        raise CldgError("human-eval score: the same sheet is given twice")
    # each annotator on every item they filled; the majority and kappa on the items all sheets have
    per = {name: _wlt([x[i] for i in sorted(x, key=int)]) for name, x in zip(names, labels)}
    if any(len(x) != len(items) for x in labels):
        console.print(f"[yellow]warning:[/] the sheets fill different items ({', '.join(f'{n}: {len(x)}' for n, x in zip(names, labels))}); "
                      f"the majority and kappa use the {len(items)} items all of them have", highlight=False)
    majority = []
    for i in items:
        votes = [x[i] for x in labels]
        top = max(set(votes), key=votes.count)
        majority.append(top if votes.count(top) * 2 > len(votes) else "tie")
    kappas = {f"{names[a]} vs {names[b]}": cohens_kappa([labels[a][i] for i in items], [labels[b][i] for i in items])
              for a, b in combinations(range(len(labels)), 2)}
    result = {"system_a": key["system_a"], "system_b": key["system_b"], "per_annotator": per,
              "overall": _wlt(majority), "kappa": kappas,
              "mean_kappa": sum(kappas.values()) / len(kappas) if kappas else None}
    if not as_json:
        table = Table(title="Human evaluation: A vs B (win = A preferred)")
        for col in ("annotator", "win %", "loss %", "tie %", "items"):
            table.add_column(col)
        for name, r in list(per.items()) + [("overall (majority)", result["overall"])]:
            table.add_row(name, f"{100 * r['win']:.1f}", f"{100 * r['loss']:.1f}", f"{100 * r['tie']:.1f}", str(r["items"]))
        results.print(table)
        if kappas:
            results.print("Cohen's kappa: " + ", ".join(f"{k}: {v:.3f}" for k, v in kappas.items()))
    return result
