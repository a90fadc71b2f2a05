"""Scoring throughput of a trained MSN matcher (pairs/s), plus its and the baselines' valid metrics.

    .venv/bin/python bench/bench_matcher.py --matcher-dir cldg-work/matcher/latest [--device cpu] \
        [--pairs 5000] [--batch-size 256] [--threads 2]

Scores `--pairs` (context, response) pairs from the valid split of the matcher's prepare artifact, the
way mining does (each context against 10 candidates), once to warm up and once timed. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--matcher-dir", type=Path, default=Path("cldg-work/matcher/latest"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from cldg.artifacts import Artifact
    from cldg.data.pairs import read_pairs
    from cldg.matching.evaluation import candidate_pairs, candidate_sets
    from cldg.matching.msn import load_msn_matcher
    from cldg.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    art = Artifact.load(args.matcher_dir)
    prepared = Path(art.manifest["inputs"]["prepare"]["path"])
    valid = read_pairs(prepared / "pairs-valid.parquet")
    sets = candidate_sets(valid.response, 9, seed=0)[: max(1, args.pairs // 10)]
    contexts, responses = candidate_pairs(valid.context, valid.response, sets)

    matcher = load_msn_matcher(art.path, device, batch_size=args.batch_size)
    warm = min(len(contexts), 2 * args.batch_size)
    matcher.score(contexts[:warm], responses[:warm])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scores = matcher.score(contexts, responses)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    metrics = json.loads((art.path / "metrics.json").read_text())
    print(json.dumps({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "pairs": len(contexts),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(contexts) / seconds, 1),
        "mean_prob": round(float(np.mean(scores)), 4),
        "matcher_config": json.loads((art.path / "model.json").read_text())["config"],
        "valid_metrics": metrics["validation"],
        "validation_sets": metrics["validation_sets"],
        "train_seconds": metrics["train"]["train_seconds"],
        "train_steps": metrics["train"]["steps"],
    }, indent=2))


if __name__ == "__main__":
    main()
