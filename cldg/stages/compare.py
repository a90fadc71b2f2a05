"""`cldg compare`: evaluate runs side by side, best per metric marked, with paired bootstrap intervals.

Not an artifact stage: it reads evaluate artifacts and writes `comparison.{json,md,png}` to --out.
Every run after the first is compared with the first (the baseline, e.g. the MLE reference) on the
same test pairs: the mean difference and its 95% bootstrap interval, from per-response values
(resampling responses for Dist-n, which is a corpus-level figure).
"""
from __future__ import annotations

import json
from pathlib import Path

from cldg.artifacts import Artifact
from cldg.errors import CldgError

HIGHER_IS_BETTER_EXCEPT = {"reference_ppl"}


def _load_run(path: Path) -> tuple[Artifact, dict, list[dict]]:
    art = Artifact.load(Path(path))
    if art.stage != "eval":
        raise CldgError(f"{path}: a '{art.stage}' artifact, not an evaluate run")
    metrics = json.loads(art.file("metrics.json").read_text())
    gens = [json.loads(line) for line in art.file("generations.jsonl").read_text().splitlines() if line.strip()]
    return art, metrics, gens


def _dist_bootstrap(a_texts: list[list[str]], b_texts: list[list[str]], n: int, samples: int = 200, seed: int = 0):
    import numpy as np

    from cldg.metrics.diversity import distinct_n

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(samples):
        idx = rng.integers(0, len(a_texts), len(a_texts))
        diffs.append(distinct_n([b_texts[i] for i in idx], n) - distinct_n([a_texts[i] for i in idx], n))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"diff": distinct_n(b_texts, n) - distinct_n(a_texts, n), "ci_low": float(lo), "ci_high": float(hi),
            "p_not_better": float((np.asarray(diffs) <= 0).mean())}


def compare_runs(runs: list[Path], workdir: Path, out_dir: Path | None, as_json: bool) -> dict:
    from rich.table import Table

    from cldg.metrics.stats import paired_bootstrap
    from cldg.progress import console
    from cldg.stages.evaluate import PERCENT, TABLE_LAYOUT, fmt

    if not runs:
        raise CldgError("compare: give at least one evaluate artifact directory")
    loaded = [_load_run(p) for p in runs]
    names = [f"{m['model']} ({m['decoding']})" for _, m, _ in loaded]
    if len(set(names)) < len(names):
        names = [f"{n} [{a.fingerprint[:6]}]" for n, (a, _, _) in zip(names, loaded)]
    keys = [k for _, k in TABLE_LAYOUT] + ["length", "reference_ppl", "sacrebleu"]
    best = {}
    for k in keys:
        vals = [m[k] for _, m, _ in loaded]
        best[k] = min(vals) if k in HIGHER_IS_BETTER_EXCEPT else max(vals)
    result = {"runs": [{"name": n, "path": str(a.path), "metrics": {k: m[k] for k in keys}} for n, (a, m, _) in
                       zip(names, loaded)], "differences": []}
    base_art, base_m, base_g = loaded[0]
    words = lambda g: g["generated"].lower().split()  # noqa: E731
    for (art, m, gens), name in zip(loaded[1:], names[1:]):
        if [g["pair_id"] for g in gens] != [g["pair_id"] for g in base_g]:
            raise CldgError(f"{art.path}: evaluated on other pairs than {base_art.path}; compare runs of the same split")
        diffs = {}
        for k in keys:
            if k in ("dist1", "dist2", "dist3"):
                diffs[k] = _dist_bootstrap([words(g) for g in base_g], [words(g) for g in gens], int(k[-1]))
            elif k in gens[0]["metrics"]:
                diffs[k] = paired_bootstrap([g["metrics"][k] for g in base_g], [g["metrics"][k] for g in gens])
        result["differences"].append({"baseline": names[0], "run": name, "metrics": diffs})

    label = {k: n for n, k in TABLE_LAYOUT} | {"length": "length", "reference_ppl": "ref ppl", "sacrebleu": "sacreBLEU"}
    table = Table(title="cldg compare (best in bold; BLEU/Dist/embedding in %)")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    if len(loaded) > 1:
        table.add_column(f"{names[-1]} - {names[0]} [95% CI]", justify="right")
    md = ["| metric | " + " | ".join(names) + (" | difference [95% CI] |" if len(loaded) > 1 else " |"),
          "|---|" + "---|" * (len(names) + (1 if len(loaded) > 1 else 0))]
    for k in keys:
        cells = []
        for _, m, _ in loaded:
            v = fmt(k, m[k]) if k in PERCENT or k in dict(TABLE_LAYOUT).values() else f"{m[k]:.2f}"
            cells.append((f"[bold]{v}[/]", f"**{v}**") if m[k] == best[k] and len(loaded) > 1 else (v, v))
        row = [c[0] for c in cells]
        md_row = [c[1] for c in cells]
        if len(loaded) > 1:
            d = result["differences"][-1]["metrics"].get(k)
            scale = 100 if k in PERCENT else 1
            txt = f"{scale * d['diff']:+.2f} [{scale * d['ci_low']:+.2f}, {scale * d['ci_high']:+.2f}]" if d else ""
            row.append(txt)
            md_row.append(txt)
        table.add_row(label[k], *row)
        md.append(f"| {label[k]} | " + " | ".join(md_row) + " |")
    console.print(table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "comparison.json").write_text(json.dumps(result, indent=2))
        (out_dir / "comparison.md").write_text("\n".join(md) + "\n")
        _plot(out_dir / "comparison.png", names, loaded, TABLE_LAYOUT, PERCENT)
        result["outputs"] = [str(out_dir / f) for f in ("comparison.json", "comparison.md", "comparison.png")]
    return result


def _plot(path: Path, names, loaded, layout, percent) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [(n, k) for n, k in layout if k in percent]
    x = np.arange(len(keys))
    width = 0.8 / len(loaded)
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, ((_, m, _), name) in enumerate(zip(loaded, names)):
        ax.bar(x + i * width, [100 * m[k] for _, k in keys], width, label=name)
    ax.set_xticks(x + width * (len(loaded) - 1) / 2, [n for n, _ in keys])
    ax.set_ylabel("%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
