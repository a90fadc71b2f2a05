"""Reports over many evaluate runs: the summary across seeds and the ablation table (the paper's Table 5).

Each writes JSON (for scripts), markdown (for a README) and a PNG, and prints a rich table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cldg.metrics import (COUNT_LAYOUT, COUNTS, EXTRA_LAYOUT, MATCHED_LAYOUT, PERCENT, TABLE_LAYOUT, fmt,
                          fmt_interval)

ABLATION_LAYOUT = TABLE_LAYOUT + EXTRA_LAYOUT + COUNT_LAYOUT
# the seeds summary compares two models at a time per seed, so it has each seed's length-matched Dist too
SUMMARY_LAYOUT = ABLATION_LAYOUT + MATCHED_LAYOUT
LOWER_IS_BETTER = {"reference_ppl"}
# the ablation table's one comparison per row: Dist at one length against the MLE reference (points)
MATCHED_VS_REFERENCE_LAYOUT = [("Dist-1 vs ref, length-matched", "dist1_matched_vs_reference"),
                               ("Dist-2 vs ref, length-matched", "dist2_matched_vs_reference"),
                               ("Dist-3 vs ref, length-matched", "dist3_matched_vs_reference")]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _pm(key: str, mean: float, sd: float) -> str:
    scale = 100 if key in PERCENT else 1
    digits = 3 if key.startswith("ent") else 1 if key in COUNTS else 2
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def seed_summary(comparisons: dict[int, dict], out_dir: Path) -> dict:
    """Across seeds: each model's mean ± sd per metric, and for every run after the first (the baseline,
    the MLE reference) its paired 95% bootstrap CI per seed and how many seeds agree in sign.

    comparisons: seed -> `compare_runs` result of that seed's evaluate runs (same order every seed)."""
    from rich.table import Table

    from cldg.progress import console

    seeds = sorted(comparisons)
    first = comparisons[seeds[0]]
    models = [r["name"] for r in first["runs"]]
    for seed in seeds:
        if [r["name"] for r in comparisons[seed]["runs"]] != models:
            raise ValueError(f"seed {seed} evaluated other models than seed {seeds[0]}")
    keys = [k for _, k in SUMMARY_LAYOUT]
    per_model = {}
    for i, name in enumerate(models):
        per_model[name] = {}
        for k in keys:
            values = [comparisons[s]["runs"][i]["metrics"][k] for s in seeds]
            mean, sd = mean_sd(values)
            per_model[name][k] = {"mean": mean, "sd": sd, "values": values}
    contrasts = []
    for j, d in enumerate(first["differences"]):
        rows = {}
        for k in keys:
            per_seed = [comparisons[s]["differences"][j]["metrics"].get(k) for s in seeds]
            if any(p is None for p in per_seed):
                continue
            better = (lambda p: p["diff"] < 0) if k in LOWER_IS_BETTER else (lambda p: p["diff"] > 0)
            rows[k] = {"per_seed": per_seed,
                       "seeds_better": sum(better(p) for p in per_seed),
                       "seeds_ci_above_zero": sum(p["ci_low"] > 0 for p in per_seed),
                       "seeds_ci_below_zero": sum(p["ci_high"] < 0 for p in per_seed)}
        contrasts.append({"baseline": d["baseline"], "run": d["run"], "metrics": rows})
    result = {"seeds": seeds, "models": models, "per_model": per_model, "differences": contrasts}

    header = ["metric"] + [f"{m} (mean ± sd)" for m in models]
    for c in contrasts:
        header += [f"{c['run']} − {c['baseline']}, seed {s} [95% CI]" for s in seeds] + ["seeds better / CI > 0"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    table = Table(title=f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): mean ± sd; "
                        "BLEU/Dist/embedding in %, Ent in bits")
    for h in header:
        table.add_column(h, justify="right")
    for label, k in SUMMARY_LAYOUT:
        cells = [_pm(k, per_model[m][k]["mean"], per_model[m][k]["sd"]) for m in models]
        for c in contrasts:
            row = c["metrics"].get(k)
            if row is None:
                cells += [""] * (len(seeds) + 1)
                continue
            cells += [fmt_interval(k, p) for p in row["per_seed"]]
            cells.append(f"{row['seeds_better']}/{len(seeds)} / {row['seeds_ci_above_zero']}/{len(seeds)}")
        lines.append("| " + " | ".join([label] + cells) + " |")
        table.add_row(label, *cells)
    console.print(table)
    result["markdown"] = "\n".join(lines) + "\n"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
    (out_dir / "summary.md").write_text(
        f"# cldg across seeds {', '.join(map(str, seeds))}\n\nEach model's mean ± sample sd over the seeds; for "
        "each seed the paired 95% bootstrap interval of the difference against the first model; then in how "
        "many seeds the difference goes the better way and in how many its interval lies above zero.\n\n"
        + result["markdown"])
    if contrasts:
        _plot_seed_differences(out_dir / "summary.png", seeds, contrasts[0])
    console.print(f"across seeds: {out_dir / 'summary.md'}")
    return result


def _plot_seed_differences(path: Path, seeds: list[int], contrast: dict) -> None:
    """One panel per %-metric: the difference and its 95% CI for each seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(n.replace(", ", ",\n"), k) for n, k in TABLE_LAYOUT + MATCHED_LAYOUT
             if k in PERCENT and k in contrast["metrics"]]
    fig, axes = plt.subplots(1, len(shown), figsize=(1.6 * len(shown) + 1, 3.2), sharey=False)
    for ax, (name, k) in zip(axes, shown):
        per = contrast["metrics"][k]["per_seed"]
        y = [100 * p["diff"] for p in per]
        err = [[100 * (p["diff"] - p["ci_low"]) for p in per], [100 * (p["ci_high"] - p["diff"]) for p in per]]
        ax.errorbar(range(len(seeds)), y, yerr=err, fmt="o", color="#4477aa", capsize=3)
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=7)
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel(f"{contrast['run']} − {contrast['baseline']} (points)", fontsize=8)
    fig.suptitle("difference per seed, 95% paired bootstrap CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_report(runs: dict[str, dict[int, Path]], reference_runs: dict[int, Path],
                    variants: list[tuple[str, dict]], base_k: int, out_dir: Path, seconds: float | None = None) -> dict:
    """The Table 5 layout (rows: full model, ablations, group sizes; metrics as Table 2, mean over seeds
    with sd when there are several) and a PNG of each metric against k; `seconds`, the wall time of the whole
    study, is saved with them."""
    from rich.table import Table

    from cldg.progress import console
    from cldg.tools.compare import load_run

    references = {seed: load_run(Path(p)) for seed, p in reference_runs.items()}
    keys = [k for _, k in ABLATION_LAYOUT]
    rows, vs_reference = {}, {}
    for label, _ in [("MLE reference", {})] + variants:
        paths = reference_runs if label == "MLE reference" else runs[label]
        loaded = {seed: load_run(Path(p)) for seed, p in sorted(paths.items())}
        rows[label] = {k: mean_sd([run.metrics[k] for run in loaded.values()]) for k in keys}
        if label != "MLE reference":
            vs_reference[label] = {k: mean_sd(v) for k, v in
                                   _matched_dist_against(loaded, references, label).items()}
    several = len(reference_runs) > 1
    header = ["model"] + [name for name, _ in ABLATION_LAYOUT] + [name for name, _ in MATCHED_VS_REFERENCE_LAYOUT]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    table = Table(title=f"Ablations (Table 5) and group size, {len(reference_runs)} seed(s)"
                        + ("; mean ± sd" if several else ""))
    for h in header:
        table.add_column(h, justify="right")
    for label, vals in rows.items():
        cells = [_pm(k, *vals[k]) if several else fmt(k, vals[k][0]) for k in keys]
        cells += [_signed_points(*vs_reference[label][k], several) if label in vs_reference else ""
                  for _, k in MATCHED_VS_REFERENCE_LAYOUT]
        lines.append("| " + " | ".join([label] + cells) + " |")
        table.add_row(label, *cells)
    console.print(table)
    markdown = "\n".join(lines) + "\n"
    k_rows = sorted([(overrides.get("k", base_k), label) for label, overrides in variants
                     if set(overrides) <= {"k"}])
    result = {"seeds": sorted(reference_runs), "rows": {label: {k: {"mean": v[0], "sd": v[1]} for k, v in vals.items()}
                                                         for label, vals in rows.items()},
              "length_matched_vs_reference": {label: {k: {"mean": v[0], "sd": v[1]} for k, v in vals.items()}
                                              for label, vals in vs_reference.items()},
              "k": [k for k, _ in k_rows],
              "runs": {label: {str(s): str(p) for s, p in paths.items()} for label, paths in runs.items()},
              "reference_runs": {str(s): str(p) for s, p in reference_runs.items()},
              "seconds": seconds, "markdown": markdown}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
    (out_dir / "ablation.md").write_text(
        "# Ablations (the paper's Table 5) and the group size k\n\nEvery row is trained from the same reference, "
        "samples and reference cache and decoded the same way. BLEU, Dist and embedding metrics in %, Ent in bits"
        + ("; mean ± sample sd over the seeds" if several else "") + ".\n\n" + markdown)
    _plot_k(out_dir / "ablation-k.png", k_rows, rows)
    console.print(f"ablation: {out_dir / 'ablation.md'}")
    return result


def _matched_dist_against(runs: dict, references: dict, label: str) -> dict[str, list[float]]:
    """Per seed, a row's Dist-1/2/3 minus its reference's with both models' replies cut, context by context, to
    the shorter of the two (metrics.diversity.cut_to_shortest): the ablation table's answer to "more varied, or
    only longer?" that `compare` gives for two models. Fractions, as Dist; one list entry per seed."""
    from cldg.errors import CldgError
    from cldg.metrics.diversity import cut_to_shortest, distinct_n
    from cldg.tools.compare import require_same_pairs

    out = {k: [] for _, k in MATCHED_VS_REFERENCE_LAYOUT}
    for seed, run in runs.items():
        reference = references.get(seed)
        if reference is None:
            raise CldgError(f"ablation: {label} has seed {seed}, which the MLE reference has no evaluation of")
        require_same_pairs(reference, [run])
        ours, theirs = cut_to_shortest([run.words(), reference.words()])
        for n, (_, key) in enumerate(MATCHED_VS_REFERENCE_LAYOUT, 1):
            out[key].append(distinct_n(ours, n) - distinct_n(theirs, n))
    return out


def _signed_points(mean: float, sd: float, several: bool) -> str:
    """A difference of fractions in points, signed: +0.68, or +0.68 ± 0.10 over seeds."""
    return f"{100 * mean:+.2f}" + (f" ± {100 * sd:.2f}" if several else "")


def _plot_k(path: Path, k_rows: list[tuple[int, str]], rows: dict) -> None:
    """Each Table 2 metric against the group size k (error bars: sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = TABLE_LAYOUT
    cols = 5
    fig, axes = plt.subplots(math.ceil(len(shown) / cols), cols, figsize=(13, 6.5))
    ks = [k for k, _ in k_rows]
    for ax, (name, key) in zip(axes.flat, shown):
        scale = 100 if key in PERCENT else 1
        ax.errorbar(ks, [scale * rows[label][key][0] for _, label in k_rows],
                    yerr=[scale * rows[label][key][1] for _, label in k_rows], fmt="o-", color="#4477aa", capsize=3)
        ax.axhline(scale * rows["MLE reference"][key][0], color="#cc6677", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(ks)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("metrics against the group size k (dashed: MLE reference)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
