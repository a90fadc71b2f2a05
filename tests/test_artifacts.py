"""The artifact contract: fingerprints, atomic completion, skip, --force, locks, clear input errors."""
from __future__ import annotations

import json
import os

import pytest

from cldg.artifacts import Artifact, ArtifactStore, compute_fingerprint
from cldg.errors import CldgError, MissingArtifactError


def make(store: ArtifactStore, stage="prepare", config=None, inputs=None, force=False, payload="x"):
    with store.begin(stage, 1, config or {"a": 1}, inputs, force=force) as run:
        if run.existing:
            return run.existing, False
        (run.dir / "data.txt").write_text(payload)
        (run.dir / "resume-state.json").write_text("{}")
        return run.commit(rows={"n": 3}), True


def test_fingerprint_depends_on_config_schema_and_inputs():
    base = compute_fingerprint("s", 1, {"a": 1}, {})
    assert base == compute_fingerprint("s", 1, {"a": 1}, {})
    assert base != compute_fingerprint("s", 2, {"a": 1}, {})
    assert base != compute_fingerprint("s", 1, {"a": 2}, {})
    assert base != compute_fingerprint("s", 1, {"a": 1}, {"prepare": "abc"})
    assert base != compute_fingerprint("t", 1, {"a": 1}, {})


def test_commit_writes_manifest_hashes_and_latest(tmp_path):
    store = ArtifactStore(tmp_path)
    art, built = make(store)
    assert built and art.path.name == art.fingerprint
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["stage"] == "prepare" and m["schema"] == 1 and m["rows"] == {"n": 3}
    assert set(m["files"]) == {"data.txt"}  # resume state is dropped at commit
    assert len(m["files"]["data.txt"]["sha256"]) == 64
    assert "total_s" in m["timings"] and m["cldg_version"]
    assert store.latest("prepare").fingerprint == art.fingerprint
    assert not (tmp_path / "prepare" / f"{art.fingerprint}.partial").exists()


def test_same_fingerprint_is_skipped_and_force_rebuilds(tmp_path):
    store = ArtifactStore(tmp_path)
    first, built = make(store, payload="one")
    again, built_again = make(store, payload="two")
    assert not built_again and again.fingerprint == first.fingerprint
    assert (again.path / "data.txt").read_text() == "one"
    forced, built_forced = make(store, payload="two", force=True)
    assert built_forced and (forced.path / "data.txt").read_text() == "two"


def test_an_artifact_made_from_an_input_rebuilt_since_is_built_again_not_reused(tmp_path, capsys):
    """Fingerprints name configs, not code: an input deleted and rebuilt (say by fixed code) keeps its fingerprint
    but not its numbers, so what was made from its earlier build is built again; an unchanged input is reused."""
    import shutil

    store = ArtifactStore(tmp_path)
    model, _ = make(store, stage="model", payload="weights v1")
    evaluation, built = make(store, stage="eval", inputs={"model": model}, payload="scored v1")
    assert built
    again, built_again = make(store, stage="eval", inputs={"model": store.latest("model")}, payload="scored v2")
    assert not built_again and again.fingerprint == evaluation.fingerprint
    shutil.rmtree(model.path)  # what a user does to retrain after a fix
    rebuilt, built_model = make(store, stage="model", payload="weights v2")
    assert built_model and rebuilt.fingerprint == model.fingerprint
    fresh, built_eval = make(store, stage="eval", inputs={"model": rebuilt}, payload="scored v2")
    assert built_eval and fresh.fingerprint == evaluation.fingerprint
    assert (fresh.path / "data.txt").read_text() == "scored v2"
    assert "earlier build of its model input" in capsys.readouterr().err  # the console writes to stderr
    assert not make(store, stage="eval", inputs={"model": rebuilt}, payload="scored v3")[1]  # now current


def test_a_byte_identical_rebuild_of_an_input_keeps_what_was_made_from_it(tmp_path):
    store = ArtifactStore(tmp_path)
    model, _ = make(store, stage="model", payload="weights")
    make(store, stage="eval", inputs={"model": model}, payload="scored")
    rebuilt, built = make(store, stage="model", payload="weights", force=True)  # same bytes, another time
    assert built and rebuilt.manifest["created"] and rebuilt.path == model.path
    assert not make(store, stage="eval", inputs={"model": rebuilt}, payload="other")[1]


def test_interrupted_work_made_from_an_earlier_input_build_is_not_resumed(tmp_path, capsys):
    import shutil

    store = ArtifactStore(tmp_path)
    model, _ = make(store, stage="model", payload="weights v1")
    with pytest.raises(RuntimeError):
        with store.begin("eval", 1, {"a": 1}, {"model": model}) as run:
            (run.dir / "resume-checkpoint.txt").write_text("half done on v1")
            raise RuntimeError("killed")
    with store.begin("eval", 1, {"a": 1}, {"model": model}) as run:  # same input build: resumed
        assert run.resumed and (run.dir / "resume-checkpoint.txt").is_file()  # left uncommitted
    shutil.rmtree(model.path)
    rebuilt, _ = make(store, stage="model", payload="weights v2")
    with store.begin("eval", 1, {"a": 1}, {"model": rebuilt}) as run:
        assert not run.resumed and not (run.dir / "resume-checkpoint.txt").exists()
        (run.dir / "data.txt").write_text("scored v2")
        art = run.commit()
    assert "earlier build of its model input" in capsys.readouterr().err
    from cldg.artifacts import build_id

    assert art.manifest["inputs"]["model"]["build"] == build_id(rebuilt) != build_id(model)


def test_crash_leaves_no_complete_artifact_and_resume_keeps_partial(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.begin("prepare", 1, {"a": 1}) as run:
            (run.dir / "resume-checkpoint.txt").write_text("step 5")
            raise RuntimeError("killed")
    assert store.latest("prepare") is None
    with pytest.raises(MissingArtifactError, match="cldg prepare"):
        store.resolve_input("prepare", None, 1)
    with store.begin("prepare", 1, {"a": 1}) as run:  # the rerun finds its checkpoint
        assert (run.dir / "resume-checkpoint.txt").read_text() == "step 5"


def test_a_run_records_itself_in_its_partial_and_its_records_are_not_work_to_resume(tmp_path):
    """.partial/.run.json says what the manifest will (stage, config, inputs) while the run goes on; it, and a temp
    file of it that a crash left, are not work: a run that stops before writing any is dropped, not kept for
    `status` to call interrupted."""
    store = ArtifactStore(tmp_path)
    with store.begin("prepare", 1, {"a": 1}) as prepared:
        (prepared.dir / "x.txt").write_text("x")
        prep = prepared.commit()
    with pytest.raises(RuntimeError):
        with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}) as run:
            record = json.loads((run.dir / ".run.json").read_text())
            assert record["stage"] == "reference" and record["fingerprint"] == run.fingerprint
            assert record["config"] == {"lr": 1e-3} and record["inputs"]["prepare"]["path"] == str(prep.path)
            (run.dir / ".run.json.otherhost.123").write_text("{")  # left by a crash mid-write
            raise RuntimeError("no GPU")
    assert not list((tmp_path / "reference").glob("*.partial"))
    with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}) as run:
        assert not run.resumed


def test_a_follower_rank_reads_the_partial_and_writes_nothing_into_it(tmp_path):
    """A DDP rank other than 0 opens what rank 0 settled: it finds rank 0's work to resume, creates no .partial
    where there is none (rank 0 stopped and dropped it, or the workdir is not shared), and refuses in one line a
    .partial that rank 0 opened for other builds of the inputs."""
    store = ArtifactStore(tmp_path)
    with store.begin("prepare", 1, {"a": 1}) as prepared:
        (prepared.dir / "x.txt").write_text("x")
        prep = prepared.commit()
    with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}, follower=True) as run:
        assert not run.resumed and not run.dir.exists()
    with pytest.raises(RuntimeError):
        with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}) as run:  # rank 0's run, interrupted
            (run.dir / "resume-checkpoint.txt").write_text("step 5")
            raise RuntimeError("killed")
    before = sorted(p.name for p in run.dir.iterdir())
    with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}, follower=True) as follower:
        assert follower.resumed and follower.dir == run.dir
    assert sorted(p.name for p in run.dir.iterdir()) == before
    (run.dir / ".inputs.json").write_text(json.dumps({"prepare": "another-build"}))
    with pytest.raises(CldgError, match="rank 0 opened it for other builds"):
        with store.begin("reference", 1, {"lr": 1e-3}, {"prepare": prep}, follower=True):
            pass


def test_lock_keeps_two_runs_out(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.begin("prepare", 1, {"a": 1}):
        with pytest.raises(CldgError, match="lock"):
            with store.begin("prepare", 1, {"a": 1}):
                pass


def test_resolve_input_checks_stage_and_schema(tmp_path):
    store = ArtifactStore(tmp_path)
    art, _ = make(store)
    assert store.resolve_input("prepare", None, 1).path == art.path
    assert store.resolve_input("prepare", art.path, 1).fingerprint == art.fingerprint
    with pytest.raises(MissingArtifactError, match="schema 1, this cldg needs 2"):
        store.resolve_input("prepare", None, 2)
    with pytest.raises(MissingArtifactError, match="expected 'index'"):
        store.resolve_input("index", art.path, 1)
    with pytest.raises(MissingArtifactError, match="not a complete cldg artifact"):
        Artifact.load(tmp_path / "nowhere")


def test_input_fingerprint_changes_downstream_fingerprint(tmp_path):
    store = ArtifactStore(tmp_path)
    a1, _ = make(store, config={"a": 1})
    a2, _ = make(store, config={"a": 2})
    b1, _ = make(store, stage="index", inputs={"prepare": a1})
    b2, _ = make(store, stage="index", inputs={"prepare": a2})
    assert b1.fingerprint != b2.fingerprint
    assert b1.manifest["inputs"]["prepare"]["fingerprint"] == a1.fingerprint
    assert os.path.islink(tmp_path / "index" / "latest")
