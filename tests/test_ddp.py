"""DDP on the CPU: 2 processes, gloo. Ranks start from different weights and see different batches;
after training every model's parameters are identical on both ranks, and `cldg pretrain` under DDP
writes one artifact (rank 0); so does `cldg contrastive-train`."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _join_as(rank: int, port: int) -> None:
    """What torchrun would set for rank `rank` of 2 on this machine."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _spawn_two(worker, *args) -> None:
    """worker(rank, port, *args) in 2 processes on a free local port; raises if either fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, *args), nprocs=2, join=True)


def _worker(rank: int, port: int, out: str, prepared_workdir: str) -> None:
    _join_as(rank, port)
    from safetensors.torch import save_file
    from test_models import PAD, FunctionRecipe, batch_of, model_names, random_pairs, tiny

    from cldg.config import CommonOptions
    from cldg.data.batching import bucketed_batches
    from cldg.stages import pretrain
    from cldg.training import distributed
    from cldg.training.losses import nll_loss
    from cldg.training.options import TrainOptions as TrainConfig
    from cldg.training.trainer import Trainer

    dist = distributed.init_from_env("cpu")
    assert dist.world_size == 2 and dist.rank == rank
    pairs = random_pairs(32, seed=7)
    valid = batch_of(random_pairs(4, seed=8))
    seen = []

    def train_batches(epoch, start):
        for rows in bucketed_batches([len(r) for _, r in pairs], 4, 1, epoch, rank=rank, world_size=2)[start:]:
            seen.extend(rows)
            yield batch_of([pairs[i] for i in rows])

    def loss_fn(m, batch, step):
        loss, n = nll_loss(m(batch), batch.response_out, PAD)
        return loss, {"tokens": n}

    def validate(m):
        return {"criterion": nll_loss(m(valid), valid.response_out, PAD)[0].item()}

    for name in model_names():
        model = tiny(name, seed=100 + rank)  # different initial weights: DDP must broadcast rank 0's
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trainer = Trainer(model, TrainConfig(lr=1e-2, epochs=1, eval_every=2), os.path.join(out, f"run-{name}"),
                          torch.device("cpu"), FunctionRecipe(train_batches, loss_fn, validate, 4))
        assert trainer.fit()["steps"] == 4
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"{name}-{rank}.st"))
        save_file({k: v.contiguous() for k, v in initial.items()}, os.path.join(out, f"{name}-{rank}-init.st"))
    with open(os.path.join(out, f"seen-{rank}.json"), "w") as fh:
        json.dump(seen, fh)

    # the stage: both ranks train, rank 0 writes the artifact, both get it back
    cfg = pretrain.Config(model="seq2seq", embedding_dim=8, hidden_size=8, batch_size=8, max_steps=3)
    art = pretrain.run(cfg, CommonOptions(workdir=prepared_workdir, seed=1, device="cpu"))
    with open(os.path.join(out, f"artifact-{rank}.txt"), "w") as fh:
        fh.write(str(art.path))
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)  # a rank stuck in a collective must not hold CI for 15 minutes
def test_two_process_gloo_ddp_keeps_ranks_in_sync(prepared_workdir, tmp_path):
    from safetensors.torch import load_file
    from test_models import model_names

    workdir, _ = prepared_workdir
    shutil.copytree(workdir / "prepare", tmp_path / "work" / "prepare", symlinks=True)
    _spawn_two(_worker, str(tmp_path), str(tmp_path / "work"))

    for name in model_names():
        ranks = [load_file(str(tmp_path / f"{name}-{r}.st")) for r in (0, 1)]
        inits = [load_file(str(tmp_path / f"{name}-{r}-init.st")) for r in (0, 1)]
        assert any(not torch.equal(inits[0][k], inits[1][k]) for k in inits[0])  # they did start apart
        for k in ranks[0]:
            assert torch.allclose(ranks[0][k], ranks[1][k], atol=1e-6), (name, k)
        assert any(not torch.equal(ranks[0][k], inits[0][k]) for k in ranks[0])  # and trained
        # only rank 0 logs: one record per validation
        valid = [json.loads(line) for line in (tmp_path / f"run-{name}" / "train-log.jsonl").read_text().splitlines()
                 if '"valid"' in line]
        assert [r["step"] for r in valid] == [2, 4]
    seen = [set(json.loads((tmp_path / f"seen-{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # each rank its own shard of the batches
    paths = {(tmp_path / f"artifact-{r}.txt").read_text() for r in (0, 1)}
    assert len(paths) == 1
    art = paths.pop()
    manifest = json.loads(open(os.path.join(art, "manifest.json")).read())
    assert manifest["stage"] == "reference" and "model.safetensors" in manifest["files"]
    assert json.loads(open(os.path.join(art, "metrics.json")).read())["steps"] == 3


def _contrastive_worker(rank: int, port: int, out: str, workdir: str) -> None:
    _join_as(rank, port)
    from cldg.config import CommonOptions
    from cldg.stages import contrastive

    cfg = contrastive.Config(k=2, lr=1e-2, batch_size=4, epochs=1, max_steps=4, evals_per_epoch=1)
    _run_stage_as_rank(contrastive, cfg, CommonOptions(workdir=workdir, seed=5, device="cpu"),
                       os.path.join(out, f"contrastive-artifact-{rank}.txt"))


def _run_stage_as_rank(stage, cfg, common, record: str) -> None:
    """Run a stage on this rank, write the artifact path it returned to `record`, leave the process group."""
    art = stage.run(cfg, common)
    with open(record, "w") as fh:
        fh.write(str(art.path))
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_contrastive_train_under_two_process_ddp_writes_one_trained_artifact(tiny_pipeline, tmp_path):
    """contrastive-train under DDP: rank 0 fills the reference cache while rank 1 waits and then reads it,
    both ranks train on their own shard, and one artifact comes out, trained away from the reference."""
    from safetensors.torch import load_file

    from cldg.artifacts import ArtifactStore

    workdir, _, result = tiny_pipeline
    assert result.exit_code == 0, result.output
    work = tmp_path / "work"
    for stage in ("prepare", "reference", "samples"):  # the inputs only: refcache and contrastive are made here
        shutil.copytree(workdir / stage, work / stage, symlinks=True)
    _spawn_two(_contrastive_worker, str(tmp_path), str(work))

    paths = {(tmp_path / f"contrastive-artifact-{r}.txt").read_text() for r in (0, 1)}
    assert len(paths) == 1
    for stage in ("refcache", "contrastive"):
        assert len([d for d in (work / stage).iterdir()
                    if not d.is_symlink() and (d / "manifest.json").is_file()]) == 1, stage
    store = ArtifactStore(work)
    art = store.latest("contrastive")
    assert os.path.realpath(paths.pop()) == os.path.realpath(art.path)
    assert json.loads((art.path / "metrics.json").read_text())["steps"] == 4
    tuned = load_file(str(art.path / "model.safetensors"))
    reference = load_file(str(store.latest("reference").path / "model.safetensors"))
    assert tuned.keys() == reference.keys()
    assert any(not torch.equal(tuned[k], reference[k]) for k in tuned)


def _failing_worker(rank: int, port: int, out: str) -> None:
    _join_as(rank, port)
    from test_models import PAD, FunctionRecipe, batch_of, random_pairs, tiny

    from cldg.errors import CldgError, TrainingDivergedError
    from cldg.training import distributed
    from cldg.training.losses import nll_loss
    from cldg.training.options import TrainOptions as TrainConfig
    from cldg.training.trainer import Trainer

    distributed.init_from_env("cpu")
    pairs = random_pairs(16, seed=7)
    valid = batch_of(random_pairs(4, seed=8))

    def make(run_dir, nan_at=None):
        def loss_fn(m, batch, step):
            loss, n = nll_loss(m(batch), batch.response_out, PAD)
            if rank == 1 and step == nan_at:  # one rank alone diverges
                loss = loss * float("nan")
            return loss, {"tokens": n}

        recipe = FunctionRecipe(lambda epoch, start: (batch_of(pairs[i:i + 4]) for i in range(4 * start, 16, 4)),
                                loss_fn, lambda m: {"criterion": nll_loss(m(valid), valid.response_out, PAD)[0].item()},
                                4)
        return Trainer(tiny("seq2seq", seed=1), TrainConfig(lr=1e-2, epochs=1, eval_every=2), run_dir,
                       torch.device("cpu"), recipe)

    outcome = []
    try:
        make(os.path.join(out, "nan"), nan_at=2).fit()
        outcome.append("trained")
    except TrainingDivergedError as e:
        outcome.append(str(e))
    # a checkpoint that only rank 0 can see (a run dir per rank: no shared filesystem)
    own = os.path.join(out, f"own-{rank}")
    if rank == 0:
        from cldg.training import checkpoint

        model = tiny("seq2seq", seed=1)
        checkpoint.save(Path(own) / "resume", "last", model, torch.optim.Adam(model.parameters()),
                        {"step": 2, "epoch": 0, "batch_in_epoch": 2})
    distributed.barrier(distributed.current())
    try:
        make(own).fit()
        outcome.append("resumed")
    except CldgError as e:
        outcome.append(str(e))
    with open(os.path.join(out, f"outcome-{rank}.json"), "w") as fh:
        json.dump(outcome, fh)
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_a_nan_on_one_rank_or_a_checkpoint_one_rank_cannot_see_stops_every_rank_with_one_line(tmp_path):
    _spawn_two(_failing_worker, str(tmp_path))  # no rank hangs
    for rank in (0, 1):
        nan, resume = json.loads((tmp_path / f"outcome-{rank}.json").read_text())
        assert "loss became" in nan and "at step 2" in nan, (rank, nan)
        assert "ranks found different checkpoints" in resume and "filesystem" in resume, (rank, resume)


def _stale_partial_worker(rank: int, port: int, out: str, workdir: str) -> None:
    _join_as(rank, port)
    import time

    from cldg.artifacts import ArtifactStore
    from cldg.config import CommonOptions
    from cldg.stages import pretrain

    if rank == 0:  # rank 0 comes late: rank 1 must not meet the stale work before rank 0 has cleared it
        begin = ArtifactStore.begin

        def late_begin(self, *args, **kwargs):
            time.sleep(2)
            return begin(self, *args, **kwargs)

        ArtifactStore.begin = late_begin
    cfg = pretrain.Config(model="seq2seq", embedding_dim=8, hidden_size=8, batch_size=8, max_steps=2)
    _run_stage_as_rank(pretrain, cfg, CommonOptions(workdir=workdir, seed=1, device="cpu"),
                       os.path.join(out, f"stale-artifact-{rank}.txt"))


@pytest.mark.timeout(300)
def test_ddp_ranks_meet_a_stale_partial_only_after_rank_0_has_started_it_over(prepared_workdir, tmp_path):
    """Work in the artifact's .partial/ made from an earlier build of its input: rank 0 starts it over under the
    lock; the other ranks open the artifact after that, so none fails on work about to be discarded."""
    from cldg.artifacts import ArtifactStore
    from cldg.config import CommonOptions
    from cldg.stages import pretrain

    workdir, _ = prepared_workdir
    work = tmp_path / "work"
    shutil.copytree(workdir / "prepare", work / "prepare", symlinks=True)
    store = ArtifactStore(work)
    cfg = pretrain.Config(model="seq2seq", embedding_dim=8, hidden_size=8, batch_size=8, max_steps=2)
    run = store.begin("reference", pretrain.SCHEMA, pretrain.pretrain_config(cfg, CommonOptions(workdir=work, seed=1)),
                      {"prepare": store.latest("prepare")}, force=False)
    run.dir.mkdir(parents=True)
    (run.dir / ".inputs.json").write_text(json.dumps({"prepare": "an-earlier-build"}))
    (run.dir / "checkpoint-from-the-earlier-build.bin").write_bytes(b"old")
    _spawn_two(_stale_partial_worker, str(tmp_path), str(work))
    paths = {(tmp_path / f"stale-artifact-{r}.txt").read_text() for r in (0, 1)}
    assert paths == {str(run.final)}
    assert not (run.final / "checkpoint-from-the-earlier-build.bin").exists()
    assert json.loads((run.final / "metrics.json").read_text())["steps"] == 2


def _tiny_pretrain_outcome(workdir: str) -> str:
    """Run a 2-step pretrain; "trained", or the one line it stopped with."""
    from cldg.config import CommonOptions
    from cldg.errors import CldgError
    from cldg.stages import pretrain

    cfg = pretrain.Config(model="seq2seq", embedding_dim=8, hidden_size=8, batch_size=8, max_steps=2)
    try:
        pretrain.run(cfg, CommonOptions(workdir=workdir, seed=1, device="cpu"))
        return "trained"
    except CldgError as e:
        return str(e)


def _finish_with_outcome(out: str, name: str, outcome: str) -> None:
    with open(os.path.join(out, name), "w") as fh:
        fh.write(outcome)
    torch.distributed.destroy_process_group()


def _rank0_cannot_open_worker(rank: int, port: int, out: str, workdir: str) -> None:
    _join_as(rank, port)
    from cldg.artifacts import ArtifactStore
    from cldg.errors import CldgError

    if rank == 0:
        def failing_begin(self, *args, **kwargs):
            raise CldgError("no space left on the device while opening the 'reference' artifact")

        ArtifactStore.begin = failing_begin
    _finish_with_outcome(out, f"open-outcome-{rank}.txt", _tiny_pretrain_outcome(workdir))


@pytest.mark.timeout(300)
def test_when_rank_0_cannot_open_the_artifact_every_rank_stops_with_one_line(prepared_workdir, tmp_path):
    """Rank 0 fails in store.begin: the other ranks, waiting for it to settle the artifact, are told and stop
    with one line, instead of waiting at a barrier until torchrun's timeout; nothing is written."""
    workdir, _ = prepared_workdir
    work = tmp_path / "work"
    shutil.copytree(workdir / "prepare", work / "prepare", symlinks=True)
    _spawn_two(_rank0_cannot_open_worker, str(tmp_path), str(work))
    assert (tmp_path / "open-outcome-0.txt").read_text().startswith("no space left")
    assert "rank 0 could not open the artifact" in (tmp_path / "open-outcome-1.txt").read_text()
    assert not (work / "reference").exists() or not any((work / "reference").iterdir())


def _fails_inside_the_stage_worker(rank: int, port: int, out: str, workdir: str) -> None:
    _join_as(rank, port)
    import time

    from cldg.errors import CldgError
    from cldg.stages import pretrain

    real_build = pretrain.build_native

    def bad_input_inside(*args, **kwargs):  # what a stage finds only once it has opened its artifact
        if rank == 1:
            time.sleep(1.0)  # rank 0 stops and drops first, then rank 1 fails: it must not leave the .partial back
        raise CldgError("train.jsonl: line 3: not valid JSON")

    pretrain.build_native = bad_input_inside
    try:
        outcome = _tiny_pretrain_outcome(workdir)
    finally:
        pretrain.build_native = real_build
    _finish_with_outcome(out, f"inside-outcome-{rank}.txt", outcome)


@pytest.mark.timeout(300)
def test_a_ddp_run_that_fails_before_writing_anything_leaves_no_partial(prepared_workdir, tmp_path):
    """Every rank stops on bad input found inside the stage: rank 0 drops the .partial it opened (status would list
    it as an interrupted run), and the other ranks, which only read it, do not create it again."""
    workdir, _ = prepared_workdir
    work = tmp_path / "work"
    shutil.copytree(workdir / "prepare", work / "prepare", symlinks=True)
    _spawn_two(_fails_inside_the_stage_worker, str(tmp_path), str(work))
    for rank in (0, 1):
        assert (tmp_path / f"inside-outcome-{rank}.txt").read_text() == "train.jsonl: line 3: not valid JSON"
    assert not list((work / "reference").glob("*.partial"))
