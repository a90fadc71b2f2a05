"""The kill -9 battery, two writers, a full disk and the cost of verification; prints JSON figures.

    python bench/reliability.py                    # every long stage, 10 kills each (about 30 min on 2 cores)
    python bench/reliability.py --kills 2 --stages pretrain,evaluate

For each long stage (prepare, index, train-matcher, mine-samples as 2 shards on 2 workers, pretrain,
contrastive-train including its reference pass, evaluate) on a small corpus: an uninterrupted run of
the whole pipeline first (the baseline), then for each of --kills random moments, drawn uniformly from
the stretch of the stage's baseline run in which it writes its artifact (from the moment its .partial
dir appears to 95% of its wall time; --window whole: from 2%, start-up included): a copy of the
baseline workdir without that stage's artifact, the stage's command started, SIGKILL to its process
group at that moment, the same command run again. A kill survives when
- the rerun exits 0 and the artifact is complete, with the baseline's fingerprint;
- every artifact in the workdir verifies (every file hashed against its manifest: corrupt = 0);
- it matches the uninterrupted run: metrics.json equal less wall-clock entries, parquet tables equal,
  model weights byte-identical (deterministic mode, one thread);
- no `latest` ever pointed at an incomplete artifact (checked every 20 ms while the commands ran,
  and after the kill);
- the rerun said where it resumed: "resuming from step N" (training) / "resuming shard" (mining)
  when the killed run had left a checkpoint, and "from an interrupted run" when it had left a partial
  directory at all.
Files that differ between any two uninterrupted runs (Lucene segment ids, the speed figures in
report.md) are listed, not counted against a kill.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fixtures_data import without_timings  # noqa: E402  (the tests' comparison, shared)

CONFIG = """
seed = 3
device = "cpu"

[prepare]
input = "{corpus}"
vector_dim = 16
vector_epochs = 3
valid_fraction = 0.1
test_fraction = 0.1
workers = 1

[train_matcher]
hidden = 16
gru_hidden = 16
cnn_channels = 4
heads = 2
batch_size = 16
max_steps = 40
eval_every = 10
max_valid_pairs = 40

[mine_samples]
matcher = "msn"
k = 2
n_candidates = 8
n_random = 4
num_shards = 2
chunk_size = 30

[pretrain]
model = "seq2seq"
embedding_dim = 24
hidden_size = 24
num_layers = 1
batch_size = 8
epochs = 4
evals_per_epoch = 4

[contrastive_train]
k = 2
batch_size = 4
epochs = 1
evals_per_epoch = 4
cache_batch_size = 16

[evaluate]
decoding = "beam"
beam_size = 3
max_len = 12
batch_size = 4
"""

# stage -> (commands run at once, the artifact stages it writes)
STAGES = {
    "prepare": ([["prepare"]], ["prepare"]),
    "index": ([["index"]], ["index"]),
    "train-matcher": ([["train-matcher"]], ["matcher"]),
    "mine-samples": ([["mine-samples", "--shard", "0/2"], ["mine-samples", "--shard", "1/2"]], ["samples"]),
    "pretrain": ([["pretrain"]], ["reference"]),
    "contrastive-train": ([["contrastive-train"]], ["refcache", "contrastive"]),
    "evaluate": ([["evaluate", "--model", "reference"]], ["eval"]),
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "250"}


def cli(args: list[str], workdir: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "cldg.cli", *args, "--workdir", str(workdir), "--config", str(config)]


def latest_violations(workdir: Path) -> list[str]:
    """`latest` links that point at anything but a complete artifact."""
    bad = []
    for link in workdir.glob("*/latest"):
        try:
            target = os.readlink(link)
        except OSError:
            continue
        d = link.parent / target
        if target.endswith(".partial") or not (d / "manifest.json").is_file():
            bad.append(f"{link} -> {target}")
    return bad


def corrupt_artifacts(workdir: Path) -> list[str]:
    from cldg.artifacts import ArtifactStore, artifact_problems

    out = []
    for stage, fp, path, complete, manifest in ArtifactStore(workdir).list_artifacts():
        if complete:
            out += artifact_problems(path, manifest, full=True, use_cache=False)
    return out


def run_commands(commands: list[list[str]], workdir: Path, config: Path, kill_at: float | None, logs: Path,
                 timeout: float = 900, watch: list[str] = ()) -> dict:
    """Start the commands at once; SIGKILL their process groups at `kill_at` s (None: let them finish).
    Polls the `latest` links every 20 ms meanwhile, and notes when a .partial dir of the `watch`
    stages first appears (the stage has started writing)."""
    procs, outs = [], []
    t0 = time.perf_counter()
    for i, args in enumerate(commands):
        out = open(logs.with_name(f"{logs.name}-{i}.log"), "w")
        outs.append(out)
        procs.append(subprocess.Popen(cli(args, workdir, config), stdout=out, stderr=subprocess.STDOUT,
                                      env=ENV, cwd=ROOT, start_new_session=True))
    violations: list[str] = []
    killed = False
    writing_at = None
    while any(p.poll() is None for p in procs):
        elapsed = time.perf_counter() - t0
        if writing_at is None and any(list((workdir / s).glob("*.partial")) for s in watch):
            writing_at = elapsed
        if kill_at is not None and elapsed >= kill_at:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    killed = True
            for p in procs:
                p.wait()
            break
        if elapsed > timeout:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise TimeoutError(f"{commands} ran over {timeout} s")
        violations += latest_violations(workdir)
        time.sleep(0.02)
    for out in outs:
        out.close()
    text = "\n".join(logs.with_name(f"{logs.name}-{i}.log").read_text(errors="replace") for i in range(len(commands)))
    return {"seconds": time.perf_counter() - t0, "returncodes": [p.returncode for p in procs], "killed": killed,
            "writing_at": writing_at,
            "latest_violations": sorted(set(violations + latest_violations(workdir))), "output": text}


def compare(a: Path, b: Path, manifest_a: dict, manifest_b: dict) -> tuple[list[str], list[str]]:
    """(files that differ in content that should match, files that differ but are not comparable bytewise)."""
    import pyarrow.parquet as pq

    mismatched, other = [], []
    fa, fb = manifest_a.get("files", {}), manifest_b.get("files", {})
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            mismatched.append(f"{name} (only in one)")
            continue
        if fa[name]["sha256"] == fb[name]["sha256"]:
            continue
        if name.endswith("metrics.json"):
            if without_timings(json.loads((a / name).read_text())) != without_timings(json.loads((b / name).read_text())):
                mismatched.append(name)
        elif name.endswith("train-log.jsonl"):
            # every line whole, no step logged twice, the validations equal; a train record's loss is a
            # mean over the steps since the previous record, which a resume restarts, so it may differ
            recs = [[json.loads(line) for line in (d / name).read_text().splitlines()] for d in (a, b)]
            for kind in ("train", "valid"):
                steps = [r["step"] for r in recs[0] if r.get("type") == kind]
                if steps != sorted(set(steps)):
                    mismatched.append(f"{name} ({kind} steps logged twice)")
            valid = [[without_timings(r) for r in rs if r.get("type") == "valid"] for rs in recs]
            if valid[0] != valid[1]:
                mismatched.append(f"{name} (validations differ)")
            else:
                other.append(name)
        elif name.endswith(".parquet"):
            if not pq.read_table(a / name).equals(pq.read_table(b / name)):
                mismatched.append(name)
        elif name.endswith(".safetensors"):
            mismatched.append(name)
        else:
            other.append(name)
    return mismatched, other


def checkpoint_state(workdir: Path, art_stages: list[str]) -> dict:
    """What the killed run left: a partial dir at all, and a checkpoint a resume can start from."""
    partial, checkpoint = False, False
    for s in art_stages:
        for d in (workdir / s).glob("*.partial"):
            if any(d.iterdir()):
                partial = True
            if (d / "resume" / "last.json").is_file() or list(d.glob(".shard-*-chunk-*.parquet")):
                checkpoint = True
    return {"partial": partial, "checkpoint": checkpoint}


def baseline(root: Path, config: Path) -> tuple[Path, dict]:
    """The uninterrupted pipeline; per stage (wall seconds, seconds until it started writing)."""
    work = root / "baseline"
    timings = {}
    for stage, (commands, art_stages) in STAGES.items():
        r = run_commands(commands, work, config, None, root / f"baseline-{stage}", watch=art_stages)
        if any(r["returncodes"]):
            raise SystemExit(f"baseline {stage} failed:\n{r['output'][-3000:]}")
        timings[stage] = (r["seconds"], r["writing_at"] or 0.0)
        print(f"baseline {stage}: {r['seconds']:.1f} s, writing from {r['writing_at'] or 0:.1f} s", file=sys.stderr,
              flush=True)
    return work, timings


def trial(root: Path, base: Path, config: Path, stage: str, kill_at: float, n: int) -> dict:
    from cldg.artifacts import Artifact

    commands, art_stages = STAGES[stage]
    work = root / f"trial-{stage}-{n}"
    shutil.copytree(base, work, symlinks=True, ignore=shutil.ignore_patterns(".verified.json"))
    for s in art_stages:
        shutil.rmtree(work / s)
    killed = run_commands(commands, work, config, kill_at, root / f"{stage}-{n}-killed")
    left = checkpoint_state(work, art_stages)
    after_kill = {"latest_violations": killed["latest_violations"], "corrupt": corrupt_artifacts(work)}
    rerun = run_commands(commands, work, config, None, root / f"{stage}-{n}-rerun")
    out = rerun["output"]
    result = {"kill_at_s": round(kill_at, 2), "landed": killed["killed"], **left,
              "rerun_returncodes": rerun["returncodes"], "rerun_s": round(rerun["seconds"], 1)}
    problems = []
    if any(rerun["returncodes"]):
        problems.append(f"rerun exit {rerun['returncodes']}: {out[-500:]}")
    mismatched, differing = [], []
    for s in art_stages:
        link = work / s / "latest"
        if not (link / "manifest.json").is_file():
            problems.append(f"{s}: no complete artifact after the rerun")
            continue
        art, ref = Artifact.load(link, verify=False), Artifact.load(base / s / "latest", verify=False)
        if art.fingerprint != ref.fingerprint:
            problems.append(f"{s}: fingerprint {art.fingerprint} != baseline {ref.fingerprint}")
        m, d = compare(art.path, ref.path, art.manifest, ref.manifest)
        mismatched += [f"{s}/{x}" for x in m]
        differing += [f"{s}/{x}" for x in d]
    corrupt = after_kill["corrupt"] + corrupt_artifacts(work)
    violations = after_kill["latest_violations"] + rerun["latest_violations"]
    said_resume = "resuming from step" in out or "resuming shard" in out
    said_partial = "from an interrupted run" in out or "finishing the commit" in out
    resume_ok = (not left["checkpoint"] or said_resume or stage not in ("train-matcher", "mine-samples", "pretrain",
                                                                        "contrastive-train")) \
        and (not left["partial"] or said_partial or said_resume)
    if mismatched:
        problems.append(f"differs from the uninterrupted run: {mismatched}")
    if corrupt:
        problems.append(f"corrupt: {corrupt[:3]}")
    if violations:
        problems.append(f"latest pointed at an incomplete artifact: {violations[:3]}")
    if not resume_ok:
        problems.append("the rerun did not say where it resumed")
    result.update(said_resume=said_resume, said_partial=said_partial, corrupt=len(corrupt),
                  latest_violations=len(violations), not_bytewise_comparable=differing, survived=not problems,
                  problems=problems)
    if not problems:
        shutil.rmtree(work, ignore_errors=True)
    return result


def summarize_files(files: set[str]) -> list[str]:
    """A folder's files as one entry when there are many (a Lucene index)."""
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(f.rsplit("/", 1)[0], []).append(f)
    out = []
    for d, fs in sorted(by_dir.items()):
        out += sorted(fs) if len(fs) <= 3 else [f"{d}/ ({len(fs)} files)"]
    return out


def sha256_cost(root: Path) -> dict:
    """sha256 throughput here, and what verifying the 64.6M-parameter transformer costs, first and cached."""
    import torch

    from cldg.artifacts import Artifact, ArtifactStore, sha256_file
    from cldg.models import build_model, load_model, save_model
    from cldg.stages.pretrain import Config, model_config

    torch.manual_seed(0)
    model = build_model("transformer", 20_000, **model_config(Config(model="transformer")))
    params = sum(p.numel() for p in model.parameters())
    store = ArtifactStore(root / "sha-work")
    with store.begin("reference", 1, {"model": "transformer"}) as run:
        save_model(run.dir, model)
        t = time.perf_counter()
        art = run.commit()
        commit_s = time.perf_counter() - t
    del model
    weights = art.file("model.safetensors")
    size = weights.stat().st_size
    t = time.perf_counter()
    sha256_file(weights)
    hash_s = time.perf_counter() - t
    old = time.time_ns() - 10 ** 10  # past the cache's clock-tick guard, as any file not written this second
    os.utime(weights, ns=(old, old))
    os.unlink(root / "sha-work" / ".verified.json")
    t = time.perf_counter()
    Artifact.load(art.path)  # first verification: hashes it, remembers it
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(10):
        Artifact.load(art.path)  # every later one: stat + the cache file
    cached_s = (time.perf_counter() - t) / 10
    t = time.perf_counter()
    load_model(art.path)
    load_s = time.perf_counter() - t
    shutil.rmtree(root / "sha-work")
    return {"model": "transformer 6x512, vocab 20,000", "parameters": params, "weights_mb": round(size / 1e6, 1),
            "sha256_mb_per_s": round(size / 1e6 / hash_s), "hash_s": round(hash_s, 3),
            "first_verify_s": round(first_s, 3), "cached_verify_ms": round(cached_s * 1000, 2),
            "load_model_s": round(load_s, 3), "commit_s_incl_hash": round(commit_s, 3),
            "hashlib_openssl": hashlib.sha256().name}


def two_writers(root: Path, base: Path, config: Path) -> dict:
    """Two `cldg pretrain` of the same options on one workdir at once: one writes, the other stops."""
    from cldg.artifacts import Artifact

    work = root / "two-writers"
    shutil.copytree(base, work, symlinks=True, ignore=shutil.ignore_patterns(".verified.json"))
    shutil.rmtree(work / "reference")
    slow = ["pretrain", "--epochs", "60"]  # long enough for the second to start while the first trains
    first = subprocess.Popen(cli(slow, work, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=ENV, cwd=ROOT, text=True)
    while not list((work / "reference").glob(".*.lock")) and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cli(slow, work, config), capture_output=True, text=True, env=ENV, cwd=ROOT)
    first_out = first.communicate()[0]
    lines = [ln for ln in second.stderr.splitlines() + second.stdout.splitlines() if ln.strip()]
    third = subprocess.run(cli(slow, work, config), capture_output=True, text=True, env=ENV, cwd=ROOT)
    art = Artifact.load(work / "reference" / "latest")
    out = {"first_exit": first.returncode, "second_exit": second.returncode, "second_output_lines": len(lines),
           "second_says": lines[-1] if lines else "", "rerun_after_exit": third.returncode,
           "rerun_skipped": "skipped" in third.stderr + third.stdout,
           "artifacts_written": len([d for d in (work / "reference").iterdir() if d.is_dir()]),
           "verifies": not corrupt_artifacts(work), "fingerprint": art.fingerprint}
    shutil.rmtree(work, ignore_errors=True)
    _ = first_out
    return out


def disk_full(root: Path, corpus: Path) -> dict:
    """`cldg prepare` on a 512 KiB tmpfs that already holds one prepare artifact."""
    from cldg.artifacts import Artifact

    mnt = root / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return {"skipped": "cannot mount a tmpfs here"}
    try:
        base = [sys.executable, "-m", "cldg.cli", "prepare", "--workdir", str(mnt), "--input", str(corpus),
                "--vector-epochs", "1", "--workers", "1"]
        ok = subprocess.run(base + ["--vector-dim", "8"], capture_output=True, text=True, env=ENV, cwd=ROOT)
        first = Artifact.load(mnt / "prepare" / "latest")
        full = subprocess.run(base + ["--vector-dim", "1500"], capture_output=True, text=True, env=ENV, cwd=ROOT)
        errors = [ln for ln in (full.stderr + full.stdout).splitlines() if ln.startswith("error:")]
        return {"first_exit": ok.returncode, "full_exit": full.returncode, "error_lines": len(errors),
                "says": errors[-1] if errors else "", "traceback": "Traceback" in full.stderr,
                "earlier_artifact_verifies": not corrupt_artifacts(mnt),
                "latest_still_earlier": Artifact.load(mnt / "prepare" / "latest").path == first.path}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="Random kill moments per stage.")
    ap.add_argument("--stages", default=",".join(STAGES), help="Comma-separated: " + ", ".join(STAGES))
    ap.add_argument("--dialogues", type=int, default=60, help="Size of the corpus (tests/fixtures_data.py).")
    ap.add_argument("--seed", type=int, default=13, help="Seed of the kill moments.")
    ap.add_argument("--window", choices=("writing", "whole"), default="writing",
                    help="Kill moments drawn from the part of the stage's baseline run in which it writes its "
                         "artifact (from its .partial dir's creation to 95%% of the run; default), or from the "
                         "whole run, start-up included.")
    ap.add_argument("--keep", action="store_true", help="Keep the work folders.")
    ap.add_argument("--skip-extras", action="store_true", help="Only the kill battery.")
    args = ap.parse_args()

    from fixtures_data import make_dialogues, write_jsonl

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="cldg-reliability-"))
    t_start = time.perf_counter()
    try:
        corpus = write_jsonl(root / "corpus.jsonl", make_dialogues(args.dialogues))
        config = root / "config.toml"
        config.write_text(CONFIG.format(corpus=corpus))
        out: dict = {"corpus_dialogues": args.dialogues, "kills_per_stage": args.kills, "seed": args.seed,
                     "window": args.window}
        if not args.skip_extras:
            out["verification_cost"] = sha256_cost(root)
            print(f"verification cost: {out['verification_cost']}", file=sys.stderr, flush=True)
        base, times = baseline(root, config)
        out["baseline_s"] = {k: {"wall": round(v[0], 1), "writing_from": round(v[1], 1)} for k, v in times.items()}
        stages = {}
        for stage in args.stages.split(","):
            trials = []
            for n in range(args.kills):
                wall, writing = times[stage]
                lo = writing if args.window == "writing" else 0.02 * wall
                r = trial(root, base, config, stage, rng.uniform(lo, 0.95 * wall), n)
                trials.append(r)
                print(f"{stage} kill {n + 1}/{args.kills} at {r['kill_at_s']} s: "
                      f"{'survived' if r['survived'] else 'FAILED ' + '; '.join(r['problems'])}"
                      f"{' (checkpoint left, rerun said resuming)' if r['checkpoint'] and r['said_resume'] else ''}",
                      file=sys.stderr, flush=True)
            stages[stage] = {
                "kills_tried": len(trials), "kills_landed": sum(t["landed"] for t in trials),
                "survived": sum(t["survived"] for t in trials),
                "corrupt_artifacts": sum(t["corrupt"] for t in trials),
                "latest_violations": sum(t["latest_violations"] for t in trials),
                "left_a_checkpoint": sum(t["checkpoint"] for t in trials),
                "rerun_said_resuming_from": sum(t["said_resume"] for t in trials),
                "not_bytewise_comparable": summarize_files({f for t in trials for f in t["not_bytewise_comparable"]}),
                "failures": [t for t in trials if not t["survived"]]}
        out["stages"] = stages
        out["total"] = {k: sum(s[k] for s in stages.values()) for k in
                        ("kills_tried", "kills_landed", "survived", "corrupt_artifacts", "latest_violations",
                         "left_a_checkpoint", "rerun_said_resuming_from")}
        if not args.skip_extras:
            out["two_writers"] = two_writers(root, base, config)
            out["disk_full"] = disk_full(root, corpus)
        out["wall_s"] = round(time.perf_counter() - t_start, 1)
        print(json.dumps(out, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work folders kept in {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
