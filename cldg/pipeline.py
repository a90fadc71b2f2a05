"""`cldg run CONFIG.toml`: every stage in order from one TOML file.

The config has the common keys at top level (`workdir`, `seed`, `device`), one table per stage
(`[prepare]`, `[index]`, `[train_matcher]`, `[mine_samples]`, `[pretrain]`, `[contrastive_train]`,
`[evaluate]`) with the same keys as the stage's long options, and an optional `[run]` table:

    [run]
    evaluate_models = ["reference", "contrastive"]   # each gets its own evaluate artifact
    skip = []                                         # stage tables to leave out, e.g. ["train_matcher"]

Each stage skips itself when its artifact (same fingerprint) is complete and resumes from its
`.partial` directory when it was interrupted, so rerunning `cldg run` after a crash or Ctrl-C
continues where it stopped. `train_matcher` is left out automatically when mining uses `bm25`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from cldg.artifacts import Artifact
from cldg.config import CommonOptions, config_from_table, load_toml
from cldg.errors import CldgError
from cldg.progress import console, make_progress

# (TOML table, stage module, label)
PIPELINE: list[tuple[str, str, str]] = [
    ("prepare", "prepare", "prepare"),
    ("index", "index", "index"),
    ("train_matcher", "train_matcher", "train-matcher"),
    ("mine_samples", "mine", "mine-samples"),
    ("pretrain", "pretrain", "pretrain"),
    ("contrastive_train", "contrastive", "contrastive-train"),
    ("evaluate", "evaluate", "evaluate"),
]
KNOWN_TABLES = {t for t, _, _ in PIPELINE} | {"run"}
RUN_KEYS = {"evaluate_models", "skip"}


@dataclasses.dataclass
class StepResult:
    label: str
    artifact: Artifact
    skipped: bool
    seconds: float


def _check_doc(doc: dict[str, Any], where: str) -> None:
    common_keys = {f.name for f in dataclasses.fields(CommonOptions)} - {"config"}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in KNOWN_TABLES:
                raise CldgError(f"{where}: unknown table [{key}] (known: {', '.join(sorted(KNOWN_TABLES))})")
        elif key not in common_keys:
            raise CldgError(f"{where}: unknown top-level key {key!r} (known: {', '.join(sorted(common_keys))})")
    for key in doc.get("run", {}):
        if key not in RUN_KEYS:
            raise CldgError(f"{where} [run]: unknown key {key!r} (known: {', '.join(sorted(RUN_KEYS))})")


def plan_steps(doc: dict[str, Any], where: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(table, module, label, overrides) for every step this config runs, in order."""
    run_table = doc.get("run", {})
    skip = set(run_table.get("skip", []))
    unknown = skip - {t for t, _, _ in PIPELINE}
    if unknown:
        raise CldgError(f"{where} [run]: skip names unknown stage tables {sorted(unknown)}")
    if doc.get("mine_samples", {}).get("matcher") == "bm25":
        skip.add("train_matcher")
    models = run_table.get("evaluate_models", ["reference", "contrastive"])
    steps = []
    for table, module, label in PIPELINE:
        if table in skip:
            continue
        if table == "evaluate":
            for model in models:
                steps.append((table, module, f"evaluate ({model})", {"model": model}))
        else:
            steps.append((table, module, label, {}))
    return steps


def run_pipeline(config: Path, workdir: Path | None = None, force: bool = False,
                 device: str | None = None) -> list[StepResult]:
    from cldg.runtime import offline_environment

    offline_environment()
    doc = load_toml(config)
    where = str(config)
    _check_doc(doc, where)
    top = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    overrides: dict[str, Any] = {"config": config, "force": force}
    if workdir is not None:
        overrides["workdir"] = workdir
    if device is not None:
        overrides["device"] = device
    common = config_from_table(CommonOptions, top, where, overrides)

    steps = plan_steps(doc, where)
    # Build every config first: a typo in the last table fails before hours of training.
    configs = []
    for table, module_name, label, extra in steps:
        module = importlib.import_module(f"cldg.stages.{module_name}")
        cfg = config_from_table(module.Config, doc.get(table, {}), f"{where} [{table}]", extra)
        configs.append((label, module, cfg))

    results: list[StepResult] = []
    t_start = time.time()
    with make_progress() as progress:
        overall = progress.add_task("pipeline", total=len(configs), unit="stages")
        for i, (label, module, cfg) in enumerate(configs, 1):
            progress.update(overall, status=f"[{i}/{len(configs)}] {label}")
            console.rule(f"[bold]{i}/{len(configs)} {label}")
            t0 = time.time()
            art = module.run(cfg, common)
            results.append(StepResult(label, art, skipped=art.reused, seconds=time.time() - t0))
            progress.advance(overall)
        progress.update(overall, status="done")

    _print_summary(results, time.time() - t_start)
    evals = [r.artifact for r in results if r.label.startswith("evaluate")]
    if len(evals) >= 2:
        from cldg.stages.compare import compare_runs

        compare_runs([a.path for a in evals], common.workdir, out_dir=common.workdir / "compare", as_json=False)
    summary = {"config": str(config), "workdir": str(common.workdir), "total_s": round(time.time() - t_start, 1),
               "steps": [{"stage": r.label, "artifact": str(r.artifact.path), "skipped": r.skipped,
                          "seconds": round(r.seconds, 1)} for r in results]}
    (common.workdir / "run-summary.json").write_text(json.dumps(summary, indent=2))
    return results


def _print_summary(results: list[StepResult], total: float) -> None:
    table = Table(title=f"cldg run: {len(results)} steps in {total:,.0f} s")
    for col in ("stage", "artifact", "status", "time (s)"):
        table.add_column(col)
    for r in results:
        status = "[dim]skipped (complete)[/]" if r.skipped else "[green]built[/]"
        table.add_row(r.label, f"{r.artifact.stage}/{r.artifact.fingerprint}", status, f"{r.seconds:,.1f}")
    console.print(table)
