"""`cldg compare`: evaluate runs side by side, best per metric marked, with paired bootstrap intervals.

Not an artifact stage: it reads evaluate artifacts and, with --out, writes `comparison.json`,
`comparison.md` and `comparison.png` (grouped bars). Every run after the first is compared with the
first (the baseline, e.g. the MLE reference) on the same test pairs: the mean difference and its 95%
paired bootstrap interval, resampling responses; per-response values come from generations.jsonl
(Dist-n, a corpus-level figure, is recomputed on each resample). The runs also get Dist-n at one length: each
context's replies cut to the shortest of them (`add_length_matched_dist`).
"""
from __future__ import annotations

import json
from pathlib import Path

from cldg.artifacts import Artifact
from cldg.errors import CldgError

LOWER_IS_BETTER = {"reference_ppl"}
NO_BEST = {"length"}  # longer is not better
BOOTSTRAP_SAMPLES = 1000
DIST_BOOTSTRAP_SAMPLES = 200  # Dist-n recomputes the whole corpus figure per resample


class EvalRun:
    """One evaluate artifact: its metrics, generations (in file order) and generated words."""

    def __init__(self, art: Artifact, metrics: dict, generations: list[dict]):
        self.art, self.metrics, self.generations = art, metrics, generations
        self.name = f"{metrics.get('model', '?')} ({metrics.get('decoding', '?')})"
        self._words: list[list[str]] | None = None
        self.matched: list[list[str]] = []  # its replies cut to the compared runs' shortest (compare_runs)

    def words(self) -> list[list[str]]:
        """Generated responses as metric words: the tokenizer of the prepare artifact it was scored with."""
        if self._words is None:
            words = _tokenizer_words(self.art)
            # the tokens the metrics were computed on; older runs have only the space-joined text
            self._words = [g["generated_tokens"] if "generated_tokens" in g else words(g["generated"])
                           for g in self.generations]
        return self._words


def _tokenizer_words(art: Artifact):
    try:
        from cldg.text.tokenizer import DialogueTokenizer

        tok = DialogueTokenizer.load(Path(art.manifest["inputs"]["prepare"]["path"]) / "tokenizer.json")
        return tok.words
    except Exception:  # the prepare artifact moved away: decoded text is space-joined words already
        return lambda text: text.lower().split()


def resolve_run(spec: Path, workdir: Path) -> Path:
    """A run is an eval artifact directory, the name of one under WORKDIR/eval (a fingerprint or 'latest'), or an
    approach (`cldg approaches`: mle, contrastive): the newest evaluation of that approach's latest model."""
    from cldg.approaches import approaches, model_name_stages

    spec = Path(spec)
    if (spec / "manifest.json").is_file():
        return spec
    under = Path(workdir) / "eval" / spec
    if (under / "manifest.json").is_file():
        return under
    stages = model_name_stages()  # a model by its stage (reference) or its approach (mle), as evaluate takes it
    if str(spec) in stages:
        return newest_evaluation(next(a for a in approaches() if a.makes == stages[str(spec)]), Path(workdir))
    raise CldgError(f"{spec}: not an evaluate artifact (no manifest.json there or in {Path(workdir) / 'eval'}) nor a "
                    f"model or approach ({', '.join(sorted(stages))})")


def newest_evaluation(approach, workdir: Path) -> Path:
    """The eval artifact made last from the latest model of `approach`."""
    from cldg.artifacts import ArtifactStore

    model = ArtifactStore(workdir).latest(approach.makes)
    if model is None:
        raise CldgError(f"{approach.name}: no {approach.makes} model in {workdir}; run `cldg {approach.command}` first")
    found = []
    for manifest in sorted((workdir / "eval").glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("inputs", {}).get("model", {}).get("fingerprint") == model.fingerprint:
            found.append((m.get("created", ""), manifest.parent))
    if not found:
        raise CldgError(f"{approach.name}: no evaluation of {model.path}; run `cldg evaluate --model {approach.makes}`")
    return max(found)[1]


def load_run(path: Path) -> EvalRun:
    from cldg.metrics import COUNTS
    from cldg.metrics.diversity import distinct_count

    art = Artifact.load(Path(path))
    if art.stage != "eval":
        raise CldgError(f"{path}: a '{art.stage}' artifact, not an evaluate run (make one with `cldg evaluate`)")
    try:
        metrics = json.loads(art.file("metrics.json").read_text())
        lines = art.file("generations.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise CldgError(f"{path}: evaluate artifact without {Path(exc.filename).name}") from None
    except json.JSONDecodeError as exc:
        raise CldgError(f"{art.file('metrics.json')}:{exc.lineno}: not JSON ({exc.msg})") from None
    gens = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            g = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CldgError(f"{art.file('generations.jsonl')}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(g, dict) or "pair_id" not in g or "generated" not in g:
            raise CldgError(f"{art.file('generations.jsonl')}:{lineno}: needs 'pair_id' and 'generated'")
        gens.append(g)
    if not gens:
        raise CldgError(f"{art.file('generations.jsonl')}: no generations")
    run = EvalRun(art, metrics, gens)
    # the distinct counts, counted from the generations, so runs evaluated before the counts existed have them too
    run.metrics.update({k: distinct_count(run.words(), k) for k in COUNTS})
    return run


def dist_bootstrap(base: list[list[str]], other: list[list[str]], n: int, samples: int = DIST_BOOTSTRAP_SAMPLES,
                   seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Dist-n(other) - Dist-n(base) with a paired bootstrap interval over responses (corpus_bootstrap)."""
    from cldg.metrics.diversity import distinct_n

    return corpus_bootstrap(base, other, lambda responses: distinct_n(responses, n), samples, seed, alpha)


def corpus_bootstrap(base: list[list[str]], other: list[list[str]], statistic, samples: int = DIST_BOOTSTRAP_SAMPLES,
                     seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """statistic(other) - statistic(base) for a corpus-level figure (Dist-n, the distinct counts) with a paired
    bootstrap interval over responses, centred on the observed difference: resampling repeats responses, which
    lowers such a figure, most for the more varied system, so the replicates sit below the point difference
    (metrics.stats.recentred_interval). p_not_better is read off the same recentred replicates."""
    import numpy as np

    from cldg.metrics.stats import recentred

    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for s in range(samples):
        idx = rng.integers(0, len(base), len(base))
        diffs[s] = statistic([other[i] for i in idx]) - statistic([base[i] for i in idx])
    diff = float(statistic(other) - statistic(base))
    centred = recentred(diffs, diff)  # as metrics.stats.recentred_interval
    lo, hi = np.quantile(centred, [alpha / 2, 1 - alpha / 2])
    return {"diff": diff, "ci_low": float(lo), "ci_high": float(hi), "p_not_better": float((centred <= 0).mean())}


def differences(base: EvalRun, run: EvalRun, keys: list[str], seed: int = 0) -> dict[str, dict]:
    """Per metric: mean difference run - base, 95% paired bootstrap interval, share of resamples not better.
    The two runs answered the same pairs in the same order (compare_runs checks it)."""
    from cldg.metrics import COUNTS, MATCHED
    from cldg.metrics.diversity import distinct_count
    from cldg.metrics.stats import paired_bootstrap

    out = {}
    for k in keys:
        if k in ("dist1", "dist2", "dist3"):
            out[k] = dist_bootstrap(base.words(), run.words(), int(k[-1]), seed=seed)
        elif k in MATCHED:
            out[k] = dist_bootstrap(base.matched, run.matched, int(k[len("dist")]), seed=seed)
        elif k in COUNTS:
            out[k] = corpus_bootstrap(base.words(), run.words(), lambda responses: distinct_count(responses, k),
                                      seed=seed)
        elif all(k in g.get("metrics", {}) for g in base.generations + run.generations):
            out[k] = paired_bootstrap([g["metrics"][k] for g in base.generations],
                                      [g["metrics"][k] for g in run.generations], BOOTSTRAP_SAMPLES, seed)
    return out


def compare_runs(runs: list[Path], workdir: Path, out_dir: Path | None, as_json: bool) -> dict:
    """Table (best per metric in bold), differences against the first run with 95% bootstrap
    intervals; with out_dir, comparison.{json,md,png}. Returns the comparison as a dict."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise CldgError(f"--out {out_dir}: is a file, not a folder")
    from cldg.metrics import COUNT_LAYOUT, EXTRA_LAYOUT, MATCHED_LAYOUT, TABLE_LAYOUT, fmt, fmt_interval

    if not runs:
        raise CldgError("compare: give at least one evaluate artifact directory")
    loaded = [load_run(resolve_run(p, workdir)) for p in runs]
    names = [r.name for r in loaded]
    if len(set(names)) < len(names):
        names = [f"{n} [{r.art.fingerprint[:6]}]" for n, r in zip(names, loaded)]
    require_same_pairs(loaded[0], loaded[1:])
    add_length_matched_dist(loaded)
    layout = TABLE_LAYOUT + EXTRA_LAYOUT + [("sacreBLEU", "sacrebleu")] + COUNT_LAYOUT + MATCHED_LAYOUT
    keys = [k for _, k in layout]
    for r in loaded:
        missing = [k for k in keys if k not in r.metrics]
        if missing:
            raise CldgError(f"{r.art.file('metrics.json')}: missing metrics {missing}")
    best = {}
    for k in keys:
        if k in NO_BEST or len(loaded) < 2:
            continue
        vals = [r.metrics[k] for r in loaded]
        best[k] = min(vals) if k in LOWER_IS_BETTER else max(vals)
    result = {"runs": [{"name": n, "path": str(r.art.path), "metrics": {k: r.metrics[k] for k in keys}}
                       for n, r in zip(names, loaded)],
              "best": {k: [n for n, r in zip(names, loaded) if r.metrics[k] == v] for k, v in best.items()},
              "differences": [{"baseline": names[0], "run": n, "metrics": differences(loaded[0], r, keys)}
                              for n, r in zip(names[1:], loaded[1:])]}

    def cell(k: str, d: dict | None) -> str:
        return fmt_interval(k, d) if d else ""

    header = ["metric"] + names + [f"{d['run']} - {names[0]} [95% CI]" for d in result["differences"]]
    rows = []
    for label, k in layout:
        values = [(fmt(k, r.metrics[k]), k in best and r.metrics[k] == best[k]) for r in loaded]
        rows.append((label, values, [cell(k, d["metrics"].get(k)) for d in result["differences"]]))
    if not as_json:
        _print_table(header, rows)
    md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, values, diffs in rows:
        md.append("| " + " | ".join([label] + [f"**{v}**" if b else v for v, b in values] + diffs) + " |")
    result["markdown"] = "\n".join(md) + "\n"
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "comparison.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"},
                                                            indent=2))
        (out_dir / "comparison.md").write_text(
            "# cldg compare\n\nBLEU, Dist and embedding metrics in %, Ent in bits; best in bold; differences "
            "against the first run with 95% paired bootstrap intervals.\n\n" + result["markdown"])
        plot_comparison(out_dir / "comparison.png", names, [r.metrics for r in loaded])
        result["outputs"] = [str(out_dir / f) for f in ("comparison.json", "comparison.md", "comparison.png")]
    return result


def require_same_pairs(base: EvalRun, others: list[EvalRun]) -> None:
    """Paired differences, and Dist at one length, need every run to have answered base's pairs in base's order."""
    for run in others:
        if [g["pair_id"] for g in run.generations] != [g["pair_id"] for g in base.generations]:
            raise CldgError(f"{run.art.path}: evaluated on other pairs than {base.art.path} "
                            "(compare runs of the same split and --limit)")


def add_length_matched_dist(runs: list[EvalRun]) -> None:
    """Dist-1/2/3 of each run over its replies cut, context by context, to the shortest reply of the runs
    compared (metrics.diversity.cut_to_shortest): the runs answer in as many words as each other."""
    from cldg.metrics.diversity import cut_to_shortest, distinct_n

    for run, cut in zip(runs, cut_to_shortest([r.words() for r in runs])):
        run.matched = cut
        run.metrics.update({f"dist{n}_matched": distinct_n(cut, n) for n in (1, 2, 3)})


def _print_table(header: list[str], rows: list) -> None:
    from rich.table import Table

    from cldg.progress import results

    table = Table(title="cldg compare (best in bold; BLEU/Dist/embedding in %, Ent in bits)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for label, values, diffs in rows:
        table.add_row(label, *[f"[bold green]{v}[/]" if b else v for v, b in values], *diffs)
    results.print(table)


def plot_comparison(path: Path, names: list[str], metrics: list[dict]) -> None:
    """Grouped bars: one group per %-metric of Table 2, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cldg.metrics import PERCENT, TABLE_LAYOUT

    shown = [(n, k) for n, k in TABLE_LAYOUT if k in PERCENT]
    x = np.arange(len(shown))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, (name, m) in enumerate(zip(names, metrics)):
        ax.bar(x + i * width, [100 * m[k] for _, k in shown], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, [n for n, _ in shown])
    ax.set_ylabel("%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
