"""Statistics for comparing systems: paired bootstrap confidence intervals and Cohen's kappa."""
from __future__ import annotations

import numpy as np


def paired_bootstrap(a: list[float], b: list[float], samples: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Mean difference b - a over paired per-response values, its (1 - alpha) bootstrap interval, and
    the share of resamples where b does not beat a (a one-sided p-value)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(samples, len(x)))
    diffs = (y[idx] - x[idx]).mean(1)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"diff": float((y - x).mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_not_better": float((diffs <= 0).mean())}


def recentred_interval(replicates, estimate: float, alpha: float = 0.05) -> tuple[float, float]:
    """A (1 - alpha) interval with the spread of bootstrap replicates, centred on the point `estimate`:
    the alpha/2 and 1 - alpha/2 quantiles of estimate + (replicate - median replicate).

    For a corpus-level ratio such as Dist-n the replicates are off-centre by an artefact of resampling: a
    resample repeats responses, which adds n-grams to the total but none to the distinct count, lowering Dist
    most for the more varied system, so the plain percentile interval of a difference can lie wholly below the
    observed difference (CVAE's Dist-2: +7.05 [+5.55, +6.44]). The shift can exceed the spread, which breaks a
    bias-corrected (BC) percentile interval too, so the location is taken from the data and only the spread
    from the bootstrap. For a statistic whose replicates are centred this is the percentile interval."""
    lo, hi = np.quantile(recentred(replicates, estimate), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def recentred(replicates, estimate: float) -> np.ndarray:
    """Bootstrap replicates moved so that their median is the point `estimate` (recentred_interval's)."""
    r = np.asarray(replicates, np.float64)
    return r - np.median(r) + estimate


def cohens_kappa(labels_a: list[str], labels_b: list[str]) -> float:
    """Cohen's kappa of two annotators' labels on the same items: (p_o - p_e) / (1 - p_e)."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError("kappa needs two equally long, non-empty label lists")
    cats = sorted(set(labels_a) | set(labels_b))
    n = len(labels_a)
    p_o = sum(x == y for x, y in zip(labels_a, labels_b)) / n
    p_e = sum((labels_a.count(c) / n) * (labels_b.count(c) / n) for c in cats)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)
