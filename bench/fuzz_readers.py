"""Fuzz every corpus reader and the TOML config with hypothesis; print JSON figures.

    python bench/fuzz_readers.py                 # 10,000 cases per reader (and for the TOML config)
    python bench/fuzz_readers.py --cases 500 --readers jsonl,toml

A case is one generated input file (well-formed, randomly edited, or random bytes; strategies in
tests/fuzz_strategies.py). It passes when it ends in dialogues (a config) or in one clean CldgError
line - the CLI's exit 2 - within --time-limit seconds; anything else (another exception, a message of
several lines, a hang) is a failure, recorded with the input that caused it. Unlike pytest, the run
goes on after a failure, so the figures count every case.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fuzz(name: str, cases: int, seed: int, time_limit: float, directory: Path) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    import fuzz_strategies as fs

    counts: collections.Counter = collections.Counter()
    failures: list[dict] = []
    slowest = [0.0]

    last = directory / "last-case.txt"  # what a crash of the whole process (a segfault) was reading

    def run_case(fn, data_repr: str) -> None:
        last.write_text(data_repr[:2000])
        t0 = time.perf_counter()
        try:
            with fs.time_limit(time_limit):
                counts[fn()] += 1
        except fs.Hang as exc:
            counts["hang"] += 1
            failures.append({"input": data_repr[:400], "error": str(exc)})
        except BaseException as exc:  # noqa: BLE001 - every escape is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            counts["failure"] += 1
            if len(failures) < 20:
                failures.append({"input": data_repr[:400],
                                 "error": "".join(traceback.format_exception_only(exc)).strip()[-600:]})
        slowest[0] = max(slowest[0], time.perf_counter() - t0)

    if name == "toml":
        strategy = st.tuples(fs.toml_file, st.just(False), st.just(1 << 20))
    elif name == "auto":
        strategy = st.tuples(fs.auto_file, st.booleans(), st.sampled_from([1 << 20, 64]))
    else:
        strategy = st.tuples(fs.STRATEGIES[name], st.booleans(), st.sampled_from([1 << 20, 64]))

    @hseed(seed)
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=("generate",))
    @given(strategy)
    def run(case):
        data, skip, max_line_bytes = case
        if name == "toml":
            run_case(lambda: fs.check_toml(directory, data), repr(data))
        elif name == "auto":
            run_case(lambda: fs.check_reader(directory, "auto", data[0], ext=data[1], skip=skip), repr(data))
        else:
            run_case(lambda: fs.check_reader(directory, name, data, skip=skip, max_line_bytes=max_line_bytes),
                     repr(data))

    t0 = time.perf_counter()
    run()
    total = sum(counts.values())
    return {"cases": total, "results": counts.get("ok", 0), "clean_errors": counts.get("error", 0),
            "failures": counts.get("failure", 0), "hangs": counts.get("hang", 0),
            "seconds": round(time.perf_counter() - t0, 1), "slowest_case_s": round(slowest[0], 3),
            "failure_examples": failures[:5]}


def main() -> None:
    import subprocess

    import fuzz_strategies as fs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="Cases per reader.")
    ap.add_argument("--readers", default=",".join(list(fs.READERS) + ["toml"]),
                    help="Comma-separated: " + ", ".join(list(fs.READERS) + ["toml"]))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--time-limit", type=float, default=60.0, help="Seconds after which a case counts as a hang.")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: fuzz this reader, print its JSON
    args = ap.parse_args()

    if args.one:
        print(json.dumps(fuzz(args.one, args.cases, args.seed, args.time_limit, Path(os.environ["FUZZ_DIR"]))))
        return

    import hypothesis

    out = {"hypothesis": hypothesis.__version__, "cases_per_reader": args.cases, "seed": args.seed,
           "time_limit_s": args.time_limit, "readers": {}}
    # each reader in its own process: a crash of the process itself (a segfault in a native library)
    # is then one failure of that reader, reported with the input it was reading, not the end of the run
    for name in args.readers.split(","):
        with tempfile.TemporaryDirectory(prefix="cldg-fuzz-") as d:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--cases", str(args.cases), "--seed",
                                   str(args.seed), "--time-limit", str(args.time_limit)],
                                  capture_output=True, text=True, env={**os.environ, "FUZZ_DIR": d})
            if proc.returncode == 0:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                last = Path(d) / "last-case.txt"
                r = {"cases": None, "failures": 1, "hangs": 0, "seconds": round(time.perf_counter() - t0, 1),
                     "crashed": f"exit status {proc.returncode}" + (f" (signal {-proc.returncode})"
                                                                    if proc.returncode < 0 else ""),
                     "failure_examples": [{"input": last.read_text()[:400] if last.exists() else "?",
                                           "error": proc.stderr.strip()[-600:]}]}
        out["readers"][name] = r
        print(f"{name}: {r['cases']} cases, {r.get('results')} results, {r.get('clean_errors')} clean errors, "
              f"{r['failures']} failures, {r['hangs']} hangs, {r['seconds']} s", file=sys.stderr, flush=True)
    rs = out["readers"].values()
    out["total"] = {"cases": sum(r["cases"] or 0 for r in rs), "failures": sum(r["failures"] for r in rs),
                    "hangs": sum(r["hangs"] for r in rs)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
