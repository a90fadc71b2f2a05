"""`[run] parallel`: the side branch (index, train-matcher, mine-samples) in a second process beside the MLE
reference, each on half the threads, with thread counts fixed by the plan so that the floats do not depend on
the schedule.

The runs here are real `cldg run` processes on the tiny corpus with 2 torch threads (1 per side)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cldg.errors import CldgError
from cldg.pipeline import load_plan, plan_threads, side_branch

REPO = Path(__file__).resolve().parents[1]


def parallel_config(tiny_pipeline, root: Path, extra: str = "") -> Path:
    """The tiny pipeline's config on 2 torch threads with `[run] parallel = true` (and `extra` tables), its
    reference made large enough (hidden 256, 8 epochs: seconds, not the tiny 0.6) to be still training when
    the second process has started."""
    _, config, _ = tiny_pipeline
    text = config.read_text().replace("hidden_size = 24\n", "hidden_size = 256\n").replace("epochs = 4\n", "epochs = 8\n")
    assert "hidden_size = 256" in text and "epochs = 8" in text
    config = root / "parallel.toml"
    config.write_text("torch_threads = 2\n" + text + "\n[run]\nparallel = true\n" + extra)
    return config


def cldg_run(config: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "777"}
    env.pop("OMP_NUM_THREADS", None)  # the config's torch_threads decides
    return subprocess.run([sys.executable, "-m", "cldg.cli", "run", str(config), "--workdir", str(workdir), *args],
                          capture_output=True, text=True, env=env, timeout=900)


def steps_by_stage(workdir: Path) -> dict[str, dict]:
    return {s["stage"]: s for s in json.loads((workdir / "run-summary.json").read_text())["steps"]}


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory, tiny_pipeline):
    """The same parallel run twice, in two workdirs: (config, [(workdir, process), ...])."""
    root = tmp_path_factory.mktemp("parallel")
    config = parallel_config(tiny_pipeline, root)
    runs = [(root / f"work{i}", cldg_run(config, root / f"work{i}")) for i in (1, 2)]
    return config, runs


def test_the_side_branch_runs_beside_the_reference_on_half_the_threads(parallel_runs):
    _, runs = parallel_runs
    for workdir, proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((workdir / "run-summary.json").read_text())
        assert summary["parallel"] is True
        steps = steps_by_stage(workdir)
        threads = {stage: s["torch_threads"] for stage, s in steps.items()}
        assert threads == {"prepare": 2, "index": 1, "train-matcher": 1, "mine-samples": 1, "pretrain": 1,
                           "contrastive-train": 2, "evaluate (reference)": 2, "evaluate (contrastive)": 2}
        # the branch began before the reference was done, and contrastive training waited for its samples
        pretrain, mine = steps["pretrain"], steps["mine-samples"]
        assert steps["index"]["started_s"] < pretrain["started_s"] + pretrain["seconds"]
        assert steps["contrastive-train"]["started_s"] >= mine["started_s"] + mine["seconds"] - 0.2
        # each manifest says how many threads built it
        for stage, s in steps.items():
            manifest = json.loads((Path(s["artifact"]) / "manifest.json").read_text())
            assert manifest["torch_threads"] == threads[stage], stage
        # the branch's own output is kept and was shown in the run's
        log = (workdir / "logs" / "side-branch.log").read_text()
        assert "train-matcher" in log and "mine-samples" in log
        assert "(ran beside)" in proc.stderr and "R10@1" in proc.stderr


def test_a_parallel_run_is_reproducible_byte_for_byte(parallel_runs):
    _, ((first, _), (second, _)) = parallel_runs
    a, b = steps_by_stage(first), steps_by_stage(second)
    for stage in ("evaluate (reference)", "evaluate (contrastive)"):
        assert (Path(a[stage]["artifact"]) / "metrics.json").read_bytes() == \
            (Path(b[stage]["artifact"]) / "metrics.json").read_bytes(), stage
    for stage in ("train-matcher", "mine-samples", "pretrain", "contrastive-train"):
        # the weights and the samples by their sha256 (a trainer's metrics.json also holds its seconds)
        files = [{name: f["sha256"] for name, f in
                  json.loads((Path(steps[stage]["artifact"]) / "manifest.json").read_text())["files"].items()
                  if name.endswith((".safetensors", ".parquet"))} for steps in (a, b)]
        assert files[0] and files[0] == files[1], stage


def test_a_stage_alone_on_the_plans_thread_count_builds_the_same_model(parallel_runs, tmp_path):
    """The floats come from the thread count the plan gives a stage, not from running beside another stage:
    the reference trained alone with --torch-threads 1 is the parallel run's, byte for byte."""
    config, ((workdir, _), _) = parallel_runs
    steps = steps_by_stage(workdir)
    alone = tmp_path / "alone"
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "cldg.cli", "pretrain", "--config", str(config), "--workdir",
                           str(alone), "--prepare-dir", steps["prepare"]["artifact"], "--torch-threads", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [built] = [d for d in (alone / "reference").iterdir() if (d / "manifest.json").is_file() and not d.is_symlink()]
    ours = Path(steps["pretrain"]["artifact"]) / "model.safetensors"
    assert (built / "model.safetensors").read_bytes() == ours.read_bytes()


def test_an_error_in_the_side_branch_is_one_line_and_keeps_the_reference(tiny_pipeline, tmp_path):
    config = parallel_config(tiny_pipeline, tmp_path)
    text = config.read_text().replace("[mine_samples]\n", f'[mine_samples]\nindex_dir = "{tmp_path / "no-index"}"\n')
    config.write_text(text)
    proc = cldg_run(config, tmp_path / "work")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no-index" in last and "mine-samples, run beside" in last and "side-branch.log" in last, last
    assert "Traceback" not in proc.stderr
    # the reference trained beside it is complete
    assert [d for d in (tmp_path / "work" / "reference").iterdir() if (d / "manifest.json").is_file()]
    # and the rerun with the error fixed reuses it
    config.write_text(text.replace(f'index_dir = "{tmp_path / "no-index"}"\n', ""))
    proc = cldg_run(config, tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = steps_by_stage(tmp_path / "work")
    assert steps["pretrain"]["skipped"] and steps["train-matcher"]["skipped"]
    assert not steps["mine-samples"]["skipped"]


def test_the_plan_puts_every_data_stage_the_reference_does_not_need_beside_it():
    demo = REPO / "examples" / "chitchat-demo.toml"
    plan = load_plan(demo)
    assert plan.parallel is True
    side, beside = side_branch(plan)
    assert [s.table for s in side] == ["index", "train_matcher", "mine_samples"]
    assert [s.table for s in beside] == ["pretrain"]
    assert plan_threads(plan, 2) == {"index": 1, "train_matcher": 1, "mine_samples": 1, "pretrain": 1}
    assert plan_threads(plan, 5) == {"index": 2, "train_matcher": 2, "mine_samples": 2, "pretrain": 3}
    assert plan_threads(plan, 1) == {}  # one thread: nothing to share, everything in turn
    assert plan_threads(load_plan(demo, parallel=False), 2) == {}


def test_no_side_branch_under_torchrun(monkeypatch):
    plan = load_plan(REPO / "examples" / "chitchat-demo.toml")
    monkeypatch.setenv("WORLD_SIZE", "4")  # each rank would start its own second process
    assert plan_threads(plan, 2) == {}


def test_parallel_must_be_true_or_false(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('workdir = "w"\n[run]\nparallel = "yes"\n')
    with pytest.raises(CldgError, match=r"\[run\] parallel: expected true or false, got 'yes'"):
        load_plan(config)


def test_ablate_gives_each_stage_the_runs_threads_and_so_builds_the_runs_artifacts(parallel_runs, tiny_pipeline,
                                                                                   tmp_path):
    """`cldg ablate` runs its stages one after the other, but on the threads `cldg run` gives them under
    `parallel`, so that the ablation table's reference and samples are the run's own floats."""
    _, ((workdir, _), _) = parallel_runs
    config = parallel_config(tiny_pipeline, tmp_path, '[ablate]\nks = [2]\nvariants = ["no_group"]\n')
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "cldg.cli", "ablate", str(config), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage, artifact in (("train-matcher", "matcher"), ("mine-samples", "samples"), ("pretrain", "reference")):
        ours = json.loads((Path(steps_by_stage(workdir)[stage]["artifact"]) / "manifest.json").read_text())
        [theirs] = [json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "w" / artifact).iterdir()
                    if (d / "manifest.json").is_file() and not d.is_symlink()]
        assert theirs["torch_threads"] == ours["torch_threads"] == 1, stage

        def weights(m):
            return {n: f["sha256"] for n, f in m["files"].items() if n.endswith((".safetensors", ".parquet"))}

        assert weights(theirs) and weights(theirs) == weights(ours), stage


def test_with_several_seeds_the_side_branch_also_trains_references_and_each_seed_is_the_one_seed_runs(
        parallel_runs, tmp_path):
    """Seeds 3, 4, 5: the main process trains the references of 3 and 4 while the side branch builds the data
    stages, then the reference of 5; every seed's contrastive model comes after all of them. Seed 3's models are
    those of the one-seed run, byte for byte: the schedule changes nothing but the time."""
    config, ((single, _), _) = parallel_runs
    work = tmp_path / "work"
    proc = cldg_run(config, work, "--seeds", "3,4,5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = steps_by_stage(work)
    assert all(steps[f"pretrain [seed {s}]"]["torch_threads"] == 1 for s in (3, 4, 5))
    assert all(steps[f"contrastive-train [seed {s}]"]["torch_threads"] == 2 for s in (3, 4, 5))
    mine, ref5 = steps["mine-samples"], steps["pretrain [seed 5]"]
    assert ref5["started_s"] >= mine["started_s"] + mine["seconds"] - 0.2  # in the side branch, after mining
    last_reference = max(s["started_s"] + s["seconds"] for k, s in steps.items() if k.startswith("pretrain"))
    assert min(s["started_s"] for k, s in steps.items() if k.startswith("contrastive")) >= last_reference - 0.2
    one = steps_by_stage(single)
    for stage in ("evaluate (reference)", "evaluate (contrastive)"):
        assert (Path(steps[f"{stage} [seed 3]"]["artifact"]) / "metrics.json").read_bytes() == \
            (Path(one[stage]["artifact"]) / "metrics.json").read_bytes(), stage
    assert (work / "seeds" / "summary.json").is_file()
    assert "pretrain [seed 5]" in (work / "logs" / "side-branch.log").read_text()


def child_of(proc_dir: Path, parent: int) -> bool:
    try:  # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces, so split after its ")"
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
    except (OSError, IndexError, ValueError):
        return False


def test_ctrl_c_stops_both_processes_and_the_rerun_resumes(tiny_pipeline, tmp_path):
    """Ctrl-C at a terminal reaches the whole process group: both processes stop (exit 130, no process left
    behind), and the rerun completes the run."""
    import signal
    import time

    config = parallel_config(tiny_pipeline, tmp_path)
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    args = [sys.executable, "-m", "cldg.cli", "run", str(config), "--workdir", str(tmp_path / "work")]
    # SIGINT restored: a background job of a non-interactive shell starts with it ignored
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "work" / "logs" / "side-branch.log"
    deadline = time.time() + 120
    while not (log.is_file() and log.stat().st_size) and time.time() < deadline:
        time.sleep(0.2)  # the side branch has started and written its first line
    children = [d.name for d in Path("/proc").iterdir() if d.name.isdigit() and child_of(d, proc.pid)]
    assert children  # the side branch's process (and multiprocessing's resource tracker)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted - rerun the same command" in err
    time.sleep(1)
    for pid in children:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), f"process {pid} left running"
    rerun = cldg_run(config, tmp_path / "work")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "work" / "compare" / "comparison.json").is_file()
