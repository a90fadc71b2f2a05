"""Scoring throughput of a trained MSN matcher (pairs/s): the fast path against the reference, plus valid metrics.

    .venv/bin/python bench/bench_matcher.py --matcher-dir cldg-work/matcher/latest [--device cpu] \
        [--pairs 5000] [--candidates 10] [--batch-size 256] [--threads 2] [--repeats 3] [--cpu-bf16]

Scores `--pairs` (context, response) pairs from the valid split of the matcher's prepare artifact, the
way mining does (each context against `--candidates` responses), as `MSNMatcher.score` does
(tokenization included) with two scorers on the same pairs, taking turns run by run (the order alternating)
after one warm-up each, timed by wall clock and by the process's CPU time:
- `reference`: `score_pairs_reference`, batches of `MSN.forward` (the scoring path before issue 17);
- `fast`: `score_pairs` (what `MSNMatcher` uses now);
- `fast_bf16` (with `--cpu-bf16`): the fast path under CPU bf16 autocast, to see whether a CPU with bf16
  instructions would gain from it (on this project's AVX512-BF16 EPYC it is slower; scoring stays float32).
Runs under `configure_runtime` as a stage does (deterministic mode unless --no-deterministic). Prints
JSON: pairs/s per run and the median of each, the ratio of the medians, and how far the scores are apart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--matcher-dir", type=Path, default=Path("cldg-work/matcher/latest"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--candidates", type=int, default=10, help="responses scored per context (1 true + random)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as a stage sets them)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each scorer, interleaved")
    ap.add_argument("--no-deterministic", action="store_true")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="also time the fast path under CPU bf16 autocast (scorer fast_bf16; scoring stays float32)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from cldg.artifacts import Artifact
    from cldg.data.pairs import read_pairs
    from cldg.matching.evaluation import candidate_pairs, candidate_sets
    from cldg.matching.msn import load_msn_matcher, score_pairs, score_pairs_reference
    from cldg.runtime import configure_runtime, resolve_device

    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    threads = configure_runtime(not args.no_deterministic, args.threads)
    device = resolve_device(args.device)
    art = Artifact.load(args.matcher_dir)
    prepared = Path(art.manifest["inputs"]["prepare"]["path"])
    valid = read_pairs(prepared / "pairs-valid.parquet")
    k = max(2, args.candidates)
    sets = candidate_sets(valid.response, k - 1, seed=0)[: max(1, args.pairs // k)]
    contexts, responses = candidate_pairs(valid.context, valid.response, sets)
    matcher = load_msn_matcher(art.path, device, batch_size=args.batch_size)
    scorers = {"reference": score_pairs_reference, "fast": score_pairs}
    if args.cpu_bf16 and device.type == "cpu":
        def fast_bf16(*a):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return score_pairs(*a)
        scorers["fast_bf16"] = fast_bf16

    def run(name: str, n: int) -> tuple[float, np.ndarray, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        pairs = matcher.encode(contexts[:n], responses[:n])  # what MSNMatcher.score does, with either scorer
        scores = scorers[name](matcher.model, pairs, args.batch_size, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, scores, time.process_time() - c0

    for name in scorers:  # warm-up
        run(name, min(len(contexts), 2 * args.batch_size))
    runs: dict[str, list[float]] = {name: [] for name in scorers}
    # per second of the process's CPU time too: on a shared machine wall time mostly measures the neighbours
    # (with one torch thread it is what one free core would do; with more, waiting threads spin)
    cpu_runs: dict[str, list[float]] = {name: [] for name in scorers}
    scores = {}
    for rep in range(max(1, args.repeats)):
        for name in (scorers if rep % 2 == 0 else reversed(list(scorers))):
            seconds, scores[name], cpu = run(name, len(contexts))
            runs[name].append(round(len(contexts) / seconds, 1))
            cpu_runs[name].append(round(len(contexts) / cpu, 1))
    median = {name: statistics.median(r) for name, r in runs.items()}
    cpu_median = {name: statistics.median(r) for name, r in cpu_runs.items()}
    ref, fast = (scores[n].reshape(len(sets), k) for n in ("reference", "fast"))
    same_ranking = bool((np.argsort(-ref, axis=1, kind="stable") == np.argsort(-fast, axis=1, kind="stable")).all())
    metrics = json.loads((art.path / "metrics.json").read_text())
    print(json.dumps({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": threads,
        "deterministic": not args.no_deterministic,
        "load_average_at_start": load_at_start,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "batch_size": args.batch_size,
        "pairs": len(contexts),
        "candidates_per_context": k,
        "pairs_per_s": {name: {"median": median[name], "runs": r} for name, r in runs.items()},
        "speedup": round(median["fast"] / median["reference"], 2),
        "pairs_per_cpu_s": {name: {"median": cpu_median[name], "runs": r} for name, r in cpu_runs.items()},
        "speedup_cpu": round(cpu_median["fast"] / cpu_median["reference"], 2),
        "max_abs_diff": float(np.abs(ref - fast).max()),
        "same_ranking": same_ranking,
        **({"fast_bf16_same_top1": float((scores["fast_bf16"].reshape(len(sets), k).argmax(1) == fast.argmax(1)).mean()),
            "fast_bf16_max_abs_diff": float(np.abs(scores["fast_bf16"].reshape(len(sets), k) - fast).max())}
           if "fast_bf16" in scores else {}),
        "mean_prob": round(float(np.mean(scores["fast"])), 4),
        "matcher_config": json.loads((art.path / "model.json").read_text())["config"],
        "valid_metrics": metrics["validation"],
        "validation_sets": metrics["validation_sets"],
        "train_seconds": metrics["train"]["train_seconds"],
        "train_steps": metrics["train"]["steps"],
    }, indent=2))


if __name__ == "__main__":
    main()
