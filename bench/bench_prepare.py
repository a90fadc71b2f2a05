"""Wall time and peak memory of `cldg prepare` on the full chitchat corpus.

    .venv/bin/python bench/bench_prepare.py [--workdir DIR] [--vector-dim 300] [--vector-epochs 5]

Runs the stage in a fresh subprocess (so the peak RSS is the stage's own) with --force, then prints
JSON: wall_s, cpu_s (user + system of the stage's process; on a shared machine wall time depends on
the load, given as load_avg_1m at the start), peak_rss_mb, the stage's own timings and the corpus statistics (the paper's Table 1)
from the manifest. Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
from pathlib import Path
from cldg.config import CommonOptions
from cldg.stages import prepare
cfg = prepare.Config(vector_dim=int(sys.argv[2]), vector_epochs=int(sys.argv[3]))
art = prepare.run(cfg, CommonOptions(workdir=Path(sys.argv[1]), seed=13, force=True))
print(art.path)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--vector-dim", type=int, default=300)
    ap.add_argument("--vector-epochs", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, workdir, str(args.vector_dim), str(args.vector_epochs)],
                             check=True, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_kb = usage.ru_maxrss  # Linux: kilobytes
        manifest = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
    print(json.dumps({
        "corpus": "chitchat-dataset (full)",
        "vector_dim": args.vector_dim,
        "vector_epochs": args.vector_epochs,
        "load_avg_1m": round(load, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "stage_timings_s": manifest.get("timings"),
        "stats": manifest.get("corpus_stats"),
    }, indent=2))


if __name__ == "__main__":
    main()
