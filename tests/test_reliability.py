"""Nothing lost, nothing silently wrong: verified artifacts, kill -9, two writers, a full disk, status at 80 columns.

The full kill -9 battery (every long stage, 10 random moments each) is bench/reliability.py; here are
small versions of each check.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cldg.artifacts import Artifact, ArtifactStore, StageRun, artifact_problems
from cldg.cli import app
from cldg.errors import ArtifactLockedError, CorruptArtifactError, DiskFullError
from fixtures_data import without_timings

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def make(store: ArtifactStore, stage="prepare", config=None, files=None, inputs=None, force=False, age_s=0.0):
    """A complete artifact holding `files` ({name: bytes}); age_s moves their mtimes into the past."""
    with store.begin(stage, 1, config or {"a": 1}, inputs, force=force) as run:
        if run.existing:
            return run.existing
        for name, data in (files or {"data.bin": b"x" * 100}).items():
            (run.dir / name).write_bytes(data)
            if age_s:
                t = time.time_ns() - int(age_s * 1e9)
                os.utime(run.dir / name, ns=(t, t))
        (run.dir / "resume-state.json").write_text("{}")
        return run.commit(rows={"n": 3})


def flip_byte(path: Path, offset: int = 10) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 1]))


def one_line_error(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:") and "Traceback" not in output, output
    return lines[0]


# -- verification --------------------------------------------------------------------------------------
def test_a_flipped_byte_in_the_reference_stops_evaluate_with_one_line_and_nothing_written(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = make(store, "reference", files={"model.safetensors": bytes(range(256)) * 8, "model.json": b"{}"})
    flip_byte(ref.file("model.safetensors"), 1000)
    result = runner.invoke(app, ["evaluate", "--workdir", str(tmp_path), "--model", "reference", "--device", "cpu"])
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "model.safetensors" in line and "sha256" in line and "cldg pretrain --force" in line
    assert not (tmp_path / "eval").exists()  # nothing written
    # status says so too: without --verify from the file's stat, with --verify from its hash
    plain = runner.invoke(app, ["status", str(tmp_path), "--json"])
    assert plain.exit_code == 0 and json.loads(plain.stdout)[0]["check"] == "changed?"
    verify = runner.invoke(app, ["status", str(tmp_path), "--verify", "--json"])
    assert verify.exit_code == 2
    rows = json.loads(verify.stdout)
    assert rows[0]["state"] == "corrupt" and "model.safetensors" in rows[0]["problems"][0]


def test_a_file_is_hashed_once_then_again_only_after_it_changes(tmp_path, monkeypatch):
    import cldg.artifacts as artifacts

    calls = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    store = ArtifactStore(tmp_path)
    art = make(store, files={"a.bin": b"a" * 1000, "b.bin": b"b" * 1000}, age_s=10)
    assert sorted(calls) == ["a.bin", "b.bin"]  # the commit hashes each file once ...
    calls.clear()
    for _ in range(3):  # ... and every later reader trusts the record of that
        store.resolve_input("prepare", None, 1)
        Artifact.load(art.path)
    assert calls == []
    cache = json.loads((tmp_path / ".verified.json").read_text())
    assert set(cache) == {f"prepare/{art.fingerprint}/a.bin", f"prepare/{art.fingerprint}/b.bin"}
    # a write (same size, new content) moves mtime/ctime: the next reader hashes it and refuses it
    art.file("a.bin").write_bytes(b"c" * 1000)
    with pytest.raises(CorruptArtifactError, match=r"a\.bin: sha256 differs from its manifest\.json"):
        store.resolve_input("prepare", None, 1)
    assert calls == ["a.bin"]
    # a missing file and a file of another size are caught without hashing
    calls.clear()
    art.file("a.bin").write_bytes(b"a" * 999)
    with pytest.raises(CorruptArtifactError, match=r"a\.bin: 999 bytes, its manifest\.json says 1,000"):
        Artifact.load(art.path)
    art.file("b.bin").unlink()
    assert any("b.bin: missing" in p for p in artifact_problems(art.path, art.manifest))
    assert calls == []


def test_a_just_written_file_is_not_trusted_from_the_cache_within_the_clock_tick(tmp_path, monkeypatch):
    """A write in the same timestamp tick as the check could leave mtime unchanged: such entries are
    hashed again once (like git's racily clean index entries)."""
    import cldg.artifacts as artifacts

    store = ArtifactStore(tmp_path)
    art = make(store, files={"a.bin": b"a" * 1000})  # mtime = now
    calls = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: calls.append(1) or real(p, *a))
    Artifact.load(art.path)
    assert calls == [1]


def test_a_corrupt_complete_artifact_is_not_silently_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    art = make(store)
    flip_byte(art.file("data.bin"))
    with pytest.raises(CorruptArtifactError, match=r"data\.bin.*rebuild it with `cldg prepare --force`"):
        make(store)
    rebuilt = make(store, force=True)  # --force rebuilds it
    assert rebuilt.path == art.path and not artifact_problems(rebuilt.path, rebuilt.manifest, full=True)


def test_status_verify_checks_every_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    a = make(store, "prepare")
    make(store, "index", inputs={"prepare": a})
    ok = runner.invoke(app, ["status", str(tmp_path), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("verified") == 2
    flip_byte(a.file("data.bin"))
    bad = runner.invoke(app, ["status", str(tmp_path), "--verify"])
    assert bad.exit_code == 2
    assert "CORRUPT" in bad.output
    assert bad.output.strip().splitlines()[-1].startswith("error:") and "data.bin" in bad.output


# -- status at 80 columns ------------------------------------------------------------------------------
def test_status_is_one_row_per_artifact_and_fits_80_columns(tmp_path):
    from rich.console import Console

    from cldg.status import collect_status, status_table

    store = ArtifactStore(tmp_path)
    prev = {}
    for stage in ("prepare", "index", "matcher", "samples", "reference", "refcache", "contrastive", "eval"):
        with store.begin(stage, 1, {"s": stage}, prev) as run:
            (run.dir / "model.safetensors").write_bytes(b"w" * 250_000)
            art = run.commit(rows={"train_pairs": 117_987, "valid_pairs": 6_470, "test_pairs": 7_100,
                                   "samples": 12_345_678, "queries": 125_000},
                             timings={"total_s": 4_791.25})
        prev = {stage: art}
    (tmp_path / "reference" / "0123456789abcdef.partial").mkdir()  # one in progress
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(status_table(tmp_path, collect_status(tmp_path)))
    lines = out.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 80, out.getvalue()
    body = [ln for ln in lines if ln.strip() and ln.split()[0] in
            ("prepare", "index", "matcher", "samples", "reference", "refcache", "contrastive", "eval")]
    assert len(body) == 9  # one row each, nothing wrapped onto a second line
    for r in collect_status(tmp_path):
        assert r["fingerprint"][:8] in out.getvalue()  # short fingerprints, never cut
    assert "…" not in out.getvalue() and "1h19m" in out.getvalue() and "interrupted" in out.getvalue()
    # the details are one flag away
    long = runner.invoke(app, ["status", str(tmp_path), "--long"])
    assert long.exit_code == 0 and "samples=12,345,678" in long.output
    rows = json.loads(runner.invoke(app, ["status", str(tmp_path), "--json"]).stdout)
    assert {len(r["fingerprint"]) for r in rows} == {16} and rows[0]["rows"]["train_pairs"] == 117_987


def test_status_through_the_cli_at_80_columns(tmp_path):
    store = ArtifactStore(tmp_path)
    make(store, "prepare")
    res = subprocess.run([sys.executable, "-m", "cldg.cli", "status", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert max(len(ln) for ln in res.stdout.splitlines()) <= 80 and "verified" in res.stdout  # asked for: stdout


# -- two writers ---------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from cldg.artifacts import ArtifactStore
with ArtifactStore(sys.argv[1]).begin("prepare", 1, {"a": 1}) as run:
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_of_one_artifact_stops_with_one_line_while_other_artifacts_go_on(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = ArtifactStore(tmp_path)
        with pytest.raises(ArtifactLockedError) as err:
            make(store)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "another cldg process" in msg and "\n" not in msg
        from cldg.status import collect_status

        assert [r["check"] for r in collect_status(tmp_path)] == ["running"]  # status sees it, without locking
        # a different artifact of the same stage, or another stage, is written meanwhile
        other = make(store, config={"a": 2})
        index = make(store, "index", inputs={"prepare": other})
        assert store.latest("index").path == index.path
    finally:
        holder.kill()
        holder.wait()
    assert make(store).stage == "prepare"  # the lock died with its holder


def test_a_second_cli_run_of_the_same_stage_stops_with_one_line(prepared_workdir, tmp_path):
    import fcntl

    _, prepared = prepared_workdir
    cfg = prepared.config
    lock = tmp_path / "prepare" / f".{prepared.fingerprint}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as fh:  # what a first `cldg prepare` of the same options holds while it runs
        fcntl.flock(fh, fcntl.LOCK_EX)
        result = runner.invoke(app, ["prepare", "--workdir", str(tmp_path), "--input", cfg["input"],
                                     "--vector-dim", "16", "--vector-epochs", "3", "--valid-fraction", "0.1",
                                     "--test-fraction", "0.1", "--seed", "1"])
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "another cldg process" in line and f"prepare/{prepared.fingerprint}" in line
    assert not (tmp_path / "prepare" / f"{prepared.fingerprint}.partial").exists()


# -- kill -9 -------------------------------------------------------------------------------------------
def test_a_commit_killed_after_its_manifest_is_finished_by_the_rerun(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    old = make(store, config={"a": 0})

    def killed(self, *a, **k):
        raise SystemExit("kill -9")

    monkeypatch.setattr(StageRun, "_publish", killed)
    with pytest.raises(SystemExit):
        make(store, files={"data.bin": b"new"})
    monkeypatch.undo()
    partial = next((tmp_path / "prepare").glob("*.partial"))
    assert (partial / "manifest.json").is_file() and (partial / "resume-state.json").is_file()
    assert store.latest("prepare").path == old.path  # latest never saw the unfinished one
    with store.begin("prepare", 1, {"a": 1}) as run:  # the rerun of the same command
        assert run.existing is not None  # nothing to redo: the commit is finished
    art = store.latest("prepare")
    assert art.path == run.existing.path and art.file("data.bin").read_bytes() == b"new"
    assert not partial.exists() and not (art.path / "resume-state.json").exists()
    assert not artifact_problems(art.path, art.manifest, full=True)


WRITER = """
import sys, os
from cldg.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1])
i = 0
while True:  # new artifacts and --force rebuilds, as fast as it can
    i += 1
    with store.begin("prepare", 1, {"a": i % 7}, force=i % 3 == 0) as run:
        if run.existing:
            continue
        for j in range(3):
            (run.dir / f"f{j}.bin").write_bytes(os.urandom(20000))
        (run.dir / "resume").mkdir(exist_ok=True)
        (run.dir / "resume" / "last.json").write_text("{}")
        run.commit(rows={"i": i})
"""


def _latest_ok(workdir: Path) -> None:
    for link in workdir.glob("*/latest"):
        if os.path.lexists(link) and link.exists():
            art = Artifact.load(link, verify=False)
            assert not art.path.name.endswith(".partial")
            assert not artifact_problems(art.path, art.manifest, full=True), link


def test_kill_9_at_random_moments_of_artifact_writes_never_leaves_a_bad_latest(tmp_path):
    rng = random.Random(5)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO)
        time.sleep(0.6 + rng.random() * 0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _latest_ok(tmp_path)
        store = ArtifactStore(tmp_path)
        for a in range(7):  # every artifact completes on rerun and verifies
            with store.begin("prepare", 1, {"a": a}) as run:
                if not run.existing:
                    (run.dir / "f0.bin").write_bytes(b"rerun")
                    run.commit()
            art = store.latest("prepare")
            assert not artifact_problems(art.path, art.manifest, full=True)
        assert not list((tmp_path / "prepare").glob(".*.trash-*"))


PRETRAIN = ["pretrain", "--model", "seq2seq", "--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1",
            "--batch-size", "8", "--epochs", "3", "--evals-per-epoch", "4", "--device", "cpu", "--seed", "5"]


def test_pretrain_killed_after_a_checkpoint_resumes_from_that_step_and_matches_an_uninterrupted_run(
        prepared_workdir, tmp_path):
    workdir, _ = prepared_workdir
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for w in (killed, clean):
        shutil.copytree(workdir / "prepare", w / "prepare", symlinks=True)
    proc = subprocess.Popen([sys.executable, "-m", "cldg.cli", *PRETRAIN, "--workdir", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        ckpt = next(iter((killed / "reference").glob("*.partial/resume/last.json")), None)
        if ckpt is not None:
            break
        time.sleep(0.02)
    assert ckpt is not None and proc.poll() is None, "the run ended before its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(ckpt.read_text())["step"]
    assert not (killed / "reference" / "latest").exists()  # no latest for an incomplete artifact
    rerun = runner.invoke(app, [*PRETRAIN, "--workdir", str(killed)])
    assert rerun.exit_code == 0, rerun.output
    assert f"resuming from step {step}" in rerun.output
    whole = runner.invoke(app, [*PRETRAIN, "--workdir", str(clean)])
    assert whole.exit_code == 0, whole.output
    a, b = Artifact.load(killed / "reference" / "latest"), Artifact.load(clean / "reference" / "latest")
    assert a.fingerprint == b.fingerprint
    assert without_timings(json.loads(a.file("metrics.json").read_text())) == \
        without_timings(json.loads(b.file("metrics.json").read_text()))
    assert a.manifest["files"]["model.safetensors"] == b.manifest["files"]["model.safetensors"]  # the same weights
    logs = [[json.loads(line) for line in x.file("train-log.jsonl").read_text().splitlines()] for x in (a, b)]
    for kind in ("train", "valid"):  # nothing logged twice by the killed run and its rerun
        steps = [r["step"] for r in logs[0] if r["type"] == kind]
        assert steps == sorted(set(steps)) == [r["step"] for r in logs[1] if r["type"] == kind]
    assert [without_timings(r) for r in logs[0] if r["type"] == "valid"] == \
        [without_timings(r) for r in logs[1] if r["type"] == "valid"]
    assert not artifact_problems(a.path, a.manifest, full=True)


def test_a_trainer_killed_before_its_first_checkpoint_logs_no_step_twice(tmp_path):
    from test_pretrain import make_trainer

    with pytest.raises(RuntimeError):  # dies at step 2: step 1 is logged, no checkpoint yet
        make_trainer("seq2seq", tmp_path, [], fail_at=2, exc=RuntimeError).fit()
    log = tmp_path / "train-log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1]
    with open(log, "a") as fh:
        fh.write('{"type": "train", "st')  # and a record cut short, as kill -9 in a write leaves it
    make_trainer("seq2seq", tmp_path, []).fit()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for kind in ("train", "valid"):
        steps = [r["step"] for r in records if r["type"] == kind]
        assert steps and steps == sorted(set(steps))


# -- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs mounted for the test (needs root / CAP_SYS_ADMIN; skipped where impossible)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_and_leaves_the_earlier_artifact_and_latest_intact(small_disk):
    store = ArtifactStore(small_disk)
    first = make(store, files={"data.bin": b"a" * 100_000})
    with pytest.raises(DiskFullError) as err:
        make(store, config={"a": 2}, files={"data.bin": b"b" * 3_000_000})
    msg = str(err.value)
    assert "no space left" in msg and "\n" not in msg and "untouched" in msg
    assert store.latest("prepare").path == first.path
    assert not artifact_problems(first.path, first.manifest, full=True)
    assert os.readlink(small_disk / "prepare" / "latest") == first.fingerprint


def test_disk_full_during_a_real_stage_through_the_cli(small_disk, tiny_dialogues_path):
    ok = runner.invoke(app, ["prepare", "--workdir", str(small_disk), "--input", str(tiny_dialogues_path),
                             "--vector-dim", "8", "--vector-epochs", "1", "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    first = Artifact.load(small_disk / "prepare" / "latest")
    # 1,500-d vectors for the whole vocabulary do not fit in what is left of the 512 KiB disk
    full = runner.invoke(app, ["prepare", "--workdir", str(small_disk), "--input", str(tiny_dialogues_path),
                               "--vector-dim", "1500", "--vector-epochs", "1", "--workers", "1"])
    assert full.exit_code == 2, full.output
    errors = [ln for ln in full.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in full.output, full.output
    assert full.output.strip().splitlines()[-1] == errors[0]
    assert Artifact.load(small_disk / "prepare" / "latest").path == first.path
    assert not artifact_problems(first.path, first.manifest, full=True)


def test_status_says_how_far_a_training_or_mining_in_progress_got(tmp_path):
    """From what each leaves on disk: the tail of a training's train-log.jsonl, mining's finished chunk files."""
    from cldg.status import collect_status

    training = tmp_path / "reference" / "0123456789abcdef.partial"
    training.mkdir(parents=True)
    log = [{"type": "train", "step": s, "loss": 5.0} for s in range(1, 4000)]
    log += [{"type": "valid", "step": 922, "epoch": 0, "criterion": 5.2, "ppl": 180.0, "improved": True},
            {"type": "valid", "step": 1844, "epoch": 0, "criterion": 5.3, "ppl": 200.0, "improved": False},
            {"type": "valid", "step": 2766, "epoch": 1, "criterion": 5.4, "ppl": 221.4, "improved": False,
             "elapsed_s": 4330.2},
            {"type": "train", "step": 2800, "loss": 4.9}]
    (training / "train-log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n{\"type\": \"tra")  # mid-write
    mining = tmp_path / "samples" / "fedcba9876543210.partial"
    mining.mkdir(parents=True)
    for lo, hi in ((0, 2000), (2000, 4000), (4000, 4936)):
        (mining / f".shard-00000-chunk-{lo:09d}-{hi:09d}.parquet").write_bytes(b"x")
    (mining / "shard-00001-of-00002.parquet").write_bytes(b"x")
    (tmp_path / "contrastive" / "00112233445566ff.partial").mkdir(parents=True)  # nothing written yet
    progress = {r["stage"]: r.get("progress") for r in collect_status(tmp_path)}
    assert progress == {
        "reference": "step 3,999; valid ppl 221.4 at step 2,766 (epoch 2, 1h12m trained), 2 checks without improvement",
        "samples": "4,936 pairs mined in chunks, 1 shard done",
        "contrastive": None}
    out = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "100"}).output
    assert "reference 01234567: step 3,999; valid ppl 221.4" in out and "samples fedcba98: 4,936 pairs" in out


def test_sigterm_stops_a_training_as_ctrl_c_does_saving_its_step_and_exits_143(prepared_workdir, tmp_path):
    """`kill` (a scheduler preempting the job, a session ending) must not lose a long training: the step is
    saved as on Ctrl-C, one line says so, exit 143, and the artifact stays in .partial/ to be resumed."""
    workdir, _ = prepared_workdir
    work = tmp_path / "work"
    shutil.copytree(workdir / "prepare", work / "prepare", symlinks=True)
    cmd = [sys.executable, "-m", "cldg.cli", "pretrain", "--workdir", str(work), "--model", "seq2seq",
           "--embedding-dim", "8", "--hidden-size", "8", "--batch-size", "4", "--epochs", "500", "--seed", "1",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    log = None
    while time.time() < deadline and proc.poll() is None:
        log = next((work / "reference").glob("*.partial/train-log.jsonl"), None) if (work / "reference").exists() else None
        if log is not None and '"train"' in log.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the training ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "terminated" in out and "rerun the same command to resume" in out and "Traceback" not in out
    resume = log.parent / "resume"
    assert resume.is_dir() and any(p.name.startswith("last") for p in resume.iterdir()), list(resume.iterdir())
    assert not [p for p in (work / "reference").iterdir() if not p.name.endswith(".partial") and not p.name.startswith(".")]
