"""The shared trainer (resume after a crash or Ctrl-C, NaN stop, early stopping) and `cldg pretrain`."""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_models import FunctionRecipe, V, batch_of, random_pairs, tiny
from typer.testing import CliRunner

from cldg.data.batching import bucketed_batches
from cldg.errors import CldgError, TrainingDivergedError
from cldg.models import load_model, model_names
from cldg.text.tokenizer import PAD
from cldg.training.losses import nll_loss
from cldg.training.options import TrainOptions as TrainConfig
from cldg.training.trainer import Trainer

PAIRS = random_pairs(32, seed=5)
VALID = batch_of(random_pairs(6, seed=6))
CFG = TrainConfig(lr=1e-2, epochs=2, eval_every=3, patience=5)  # 8 batches of 4 per epoch -> 16 steps


def make_trainer(name, run_dir, losses, fail_at=None, exc=KeyboardInterrupt, cfg=CFG, after_forward=False,
                 seconds_per_step=0.0):
    """A tiny `name` model on 32 random pairs; loss_fn records every loss and raises `exc` at step `fail_at`
    (after the forward has drawn its dropout masks with `after_forward`); each step takes at least
    `seconds_per_step`."""
    import time

    model = tiny(name, seed=0)  # dropout 0.1: resume must restore the RNG too

    def loss_fn(m, batch, step):
        time.sleep(seconds_per_step)
        if fail_at is not None and step + 1 == fail_at and not after_forward:
            raise exc("stop here")
        loss, n = nll_loss(m(batch), batch.response_out, PAD)
        if fail_at is not None and step + 1 == fail_at:
            raise exc("stop here")
        losses.append(loss.item())
        return loss, {"tokens": n, "nll": loss.item()}

    def train_batches(epoch, start):
        order = bucketed_batches([len(r) for _, r in PAIRS], 4, seed=1, epoch=epoch)
        for rows in order[start:]:
            yield batch_of([PAIRS[i] for i in rows])

    def validate(m):
        return {"criterion": nll_loss(m(VALID), VALID.response_out, PAD)[0].item()}

    return Trainer(model, cfg, run_dir, torch.device("cpu"), FunctionRecipe(train_batches, loss_fn, validate, 8))


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", model_names())
def test_resume_after_ctrl_c_or_crash_continues_at_the_same_step_with_the_same_loss(name, tmp_path):
    full = []
    t = make_trainer(name, tmp_path / "full", full)
    summary = t.fit()
    assert summary["steps"] == 16 and len(full) == 16 and summary["stopped"] == "done"
    final = params(t.model)

    # Ctrl-C before step 8: the trainer saves step 7 and re-raises; the rerun starts at step 8
    first, again = [], []
    with pytest.raises(KeyboardInterrupt):
        make_trainer(name, tmp_path / "int", first, fail_at=8).fit()
    assert json.loads((tmp_path / "int/resume/last.json").read_text())["step"] == 7
    t = make_trainer(name, tmp_path / "int", again)
    assert t.fit()["steps"] == 16
    assert first == full[:7] and again == pytest.approx(full[7:], abs=1e-5)
    assert all(torch.allclose(final[k], v, atol=1e-5) for k, v in params(t.model).items())

    # a crash at step 8: nothing is saved then; the rerun goes back to the last checkpoint (step 6)
    first, again = [], []
    with pytest.raises(RuntimeError):
        make_trainer(name, tmp_path / "crash", first, fail_at=8, exc=RuntimeError).fit()
    t = make_trainer(name, tmp_path / "crash", again)
    t.fit()
    assert again == pytest.approx(full[6:], abs=1e-5)
    assert all(torch.allclose(final[k], v, atol=1e-5) for k, v in params(t.model).items())


def test_ctrl_c_after_the_forward_or_inside_the_optimizer_step_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Ctrl-C once the step's forward has drawn its dropout masks: the checkpoint keeps the RNG from before the
    step (it kept the advanced one, and the resumed run drew other masks: the full-chitchat contrastive run
    parted from its uninterrupted twin after a SIGTERM). Ctrl-C inside Adam's update waits for the update to
    finish (it could save half-updated weights). Either way the rerun gives the uninterrupted run's losses
    exactly."""
    import signal

    full = []
    t = make_trainer("seq2seq", tmp_path / "full", full)
    t.fit()
    final = params(t.model)

    first, again = [], []
    with pytest.raises(KeyboardInterrupt):
        make_trainer("seq2seq", tmp_path / "fwd", first, fail_at=8, after_forward=True).fit()
    t = make_trainer("seq2seq", tmp_path / "fwd", again)
    t.fit()
    assert first + again == full  # exactly: the same masks, the same arithmetic
    assert all(torch.equal(final[k], v) for k, v in params(t.model).items())

    real_step = torch.optim.Adam.step
    calls = []

    def step_with_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # SIGINT arrives while the update runs
            signal.raise_signal(signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_with_ctrl_c)
    first, again = [], []
    with pytest.raises(KeyboardInterrupt):
        make_trainer("seq2seq", tmp_path / "opt", first).fit()
    assert json.loads((tmp_path / "opt/resume/last.json").read_text())["step"] == 5  # the update finished first
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    t = make_trainer("seq2seq", tmp_path / "opt", again)
    t.fit()
    assert first + again == full
    assert all(torch.equal(final[k], v) for k, v in params(t.model).items())


def test_save_every_bounds_what_a_kill_9_between_checks_costs(tmp_path):
    """Checks at steps 3, 6, 9...; save_every=4 also saves at 4 and 8, so a crash at step 9 (nothing saved
    then, as under kill -9) resumes from step 8, not from the check at 6, and ends where an uninterrupted run
    does."""
    full = []
    t = make_trainer("seq2seq", tmp_path / "full", full)
    t.fit()
    final = params(t.model)
    cfg = TrainConfig(lr=1e-2, epochs=2, eval_every=3, patience=5, save_every=4)
    first, again = [], []
    with pytest.raises(RuntimeError):
        make_trainer("seq2seq", tmp_path / "crash", first, fail_at=9, exc=RuntimeError, cfg=cfg).fit()
    assert json.loads((tmp_path / "crash/resume/last.json").read_text())["step"] == 8
    t = make_trainer("seq2seq", tmp_path / "crash", again, cfg=cfg)
    assert t.fit()["steps"] == 16
    assert first == full[:8] and again == pytest.approx(full[8:], abs=1e-5)
    assert all(torch.allclose(final[k], v, atol=1e-5) for k, v in params(t.model).items())
    with pytest.raises(CldgError, match="--save-every -1"):
        make_trainer("seq2seq", tmp_path / "bad", [], cfg=TrainConfig(save_every=-1))


def test_a_run_over_two_sittings_reports_the_time_of_both(tmp_path):
    """metrics.json's train_s and each check's elapsed_s count every sitting, not the last one only: a run that
    spans a crash or several machines says how long it really trained."""
    import time

    with pytest.raises(KeyboardInterrupt):  # sitting 1: 7 slow steps, saved at step 7 on the way out
        make_trainer("seq2seq", tmp_path, [], fail_at=8, seconds_per_step=0.1).fit()
    first = json.loads((tmp_path / "resume/last.json").read_text())
    assert first["step"] == 7 and first["train_seconds"] >= 0.7 and first["sittings"] == 1
    start = time.time()
    summary = make_trainer("seq2seq", tmp_path, []).fit()  # sitting 2: the 9 other steps, fast
    second = time.time() - start
    assert summary["sittings"] == 2 and summary["steps"] == 16
    assert summary["train_seconds"] > second  # not this sitting's alone
    assert first["train_seconds"] <= summary["train_seconds"] <= first["train_seconds"] + second + 0.1
    checks = [json.loads(line) for line in (tmp_path / "train-log.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "valid"]
    elapsed = [c["elapsed_s"] for c in checks]
    assert elapsed == sorted(elapsed) and all(e >= 0.7 for c, e in zip(checks, elapsed) if c["step"] > 7)


def test_a_run_resumed_from_a_checkpoint_without_its_time_says_the_time_is_unknown(tmp_path):
    """A checkpoint saved by an older cldg holds no train_seconds: the resumed run's checks must not claim that
    training began with this sitting (status would say "12m trained" of a run of hours)."""
    import time

    with pytest.raises(KeyboardInterrupt):
        make_trainer("seq2seq", tmp_path, [], fail_at=8, seconds_per_step=0.05).fit()
    last = tmp_path / "resume/last.json"
    old = {k: v for k, v in json.loads(last.read_text()).items() if k not in ("train_seconds", "sittings")}
    last.write_text(json.dumps(old))
    start = time.time()
    summary = make_trainer("seq2seq", tmp_path, []).fit()
    assert summary["sittings"] is None and 0 < summary["train_seconds"] <= time.time() - start  # this sitting's
    checks = [json.loads(line) for line in (tmp_path / "train-log.jsonl").read_text().splitlines()]
    checks = [c for c in checks if c["type"] == "valid"]
    assert all("elapsed_s" in c for c in checks if c["step"] <= 7)  # logged by the first sitting
    assert not any("elapsed_s" in c for c in checks if c["step"] > 7)
    assert json.loads(last.read_text())["train_seconds"] is None  # and it stays unknown in later saves


def test_a_crash_inside_a_checkpoint_save_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from cldg.training import checkpoint

    full = []
    make_trainer("seq2seq", tmp_path / "full", full).fit()
    losses = []
    with pytest.raises(KeyboardInterrupt):
        make_trainer("seq2seq", tmp_path / "run", losses, fail_at=5).fit()  # saves step 4 on the way out
    resume = tmp_path / "run/resume"
    saved = {p.name for p in resume.iterdir()}
    assert "last-000000004.safetensors" in saved and "last-000000004-optim.pt" in saved
    # the next save (step 6) dies after its weights are written, before its optimizer file and JSON
    real_atomic = checkpoint.atomic_write

    def dies_on_the_optimizer_file(path, write):
        if path.name.endswith("-optim.pt"):
            raise RuntimeError("disk full")
        real_atomic(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", dies_on_the_optimizer_file)
    with pytest.raises(RuntimeError, match="disk full"):
        make_trainer("seq2seq", tmp_path / "run", []).fit()
    monkeypatch.setattr(checkpoint, "atomic_write", real_atomic)
    assert json.loads((resume / "last.json").read_text())["step"] == 4
    again = []
    t = make_trainer("seq2seq", tmp_path / "run", again)
    assert t.fit()["steps"] == 16
    assert again == pytest.approx(full[4:], abs=1e-5)  # steps 5.. from the step-4 weights, not the step-6 ones
    assert {p.name for p in resume.iterdir() if p.name.startswith("last")} == {
        "last.json", "last-000000016.safetensors", "last-000000016-optim.pt"}


def test_ctrl_c_during_a_validation_runs_it_first_on_resume(tmp_path):
    t = make_trainer("hred", tmp_path, [])
    calls = []
    real_validate = t.recipe.validate

    def interrupted_at_step_6(m):
        calls.append(t.state["step"])
        if t.state["step"] == 6:
            raise KeyboardInterrupt
        return real_validate(m)

    t.recipe.validate = interrupted_at_step_6
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert calls == [3, 6]
    t = make_trainer("hred", tmp_path, [])
    t.recipe.validate = lambda m: calls.append(t.state["step"]) or real_validate(m)
    summary = t.fit()
    assert calls == [3, 6, 6, 9, 12, 15, 16]  # the check at 6 that never finished runs before step 7
    valid = [json.loads(line)["step"] for line in (tmp_path / "train-log.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert valid == [3, 6, 9, 12, 15, 16]
    assert summary["epochs_completed"] == 2  # CFG: 2 epochs of 8 batches, all done


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    class NaNAtStep5(Exception):
        pass

    losses = []
    t = make_trainer("seq2seq", tmp_path, losses)
    real_loss_fn = t.recipe.loss

    def poisoned(m, batch, step):
        loss, info = real_loss_fn(m, batch, step)
        return (loss * float("nan") if t.state["step"] == 4 else loss), info

    t.recipe.loss = poisoned
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 4.*resume"):
        t.fit()
    last = json.loads((tmp_path / "resume/last.json").read_text())
    assert last["step"] == 3  # the checkpoint from before the NaN
    reloaded = make_trainer("seq2seq", tmp_path, [])
    reloaded._resume()
    assert all(torch.isfinite(p).all() for p in reloaded.model.parameters())


def test_early_stopping_after_patience_checks_and_the_log(tmp_path):
    t = make_trainer("hred", tmp_path, [], cfg=TrainConfig(lr=1e-3, epochs=50, eval_every=2, patience=3))
    t.recipe.validate = lambda m: {"criterion": 1.0, "nll": 1.0}  # never improves after the first check
    summary = t.fit()
    assert summary["stopped"] == "early stopping" and summary["steps"] == 8  # checks at 2 (best), 4, 6, 8
    records = [json.loads(line) for line in (tmp_path / "train-log.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4, 6, 8] and [r["improved"] for r in valid] == [True, False, False, False]
    assert valid[-1]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)  # the LR halves at each check without improvement
    assert records[0]["type"] == "train" and math.isfinite(records[0]["loss"])
    # a rerun of a finished run does nothing more
    assert make_trainer("hred", tmp_path, [], cfg=TrainConfig(lr=1e-3, epochs=50, eval_every=2, patience=3)).fit()[
        "steps"] == 8


def test_lr_patience_and_decay_follow_torchs_reduce_on_plateau_as_the_released_code_does(tmp_path):
    """--lr-patience 3 --lr-decay 0.8 (the released code's RNN schedule, ParlAI's reduceonplateau on torch's
    ReduceLROnPlateau): the rate falls once 4 checks in a row have not improved, then the count starts again; an
    improvement resets it. The LR each check leaves equals torch's scheduler fed the same criteria. The defaults
    (halve at every check without improvement) stay out of the fingerprint, so earlier artifacts are reused."""
    from cldg.config import fingerprint_config
    from cldg.stages import pretrain

    criteria = [5.0, 4.0, 4.5, 4.2, 4.1, 4.3, 4.4, 4.6, 4.7, 4.8, 3.0, 3.5, 3.6]
    cfg = TrainConfig(lr=1e-2, epochs=50, eval_every=1, patience=20, max_steps=len(criteria), lr_patience=3,
                      lr_decay=0.8)
    t = make_trainer("seq2seq", tmp_path, [], cfg=cfg)
    queue = list(criteria)
    t.recipe.validate = lambda m: {"criterion": queue.pop(0)}
    t.fit()
    valid = [json.loads(line) for line in (tmp_path / "train-log.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "valid"]

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=3, threshold=0)
    expected = []
    for c in criteria:
        plateau.step(c)
        expected.append(optimizer.param_groups[0]["lr"])
    assert [r["lr"] for r in valid] == pytest.approx(expected)
    assert expected[-1] < expected[0]  # the sequence does make it decay

    assert "lr_patience" not in fingerprint_config(pretrain.Config()) and "lr_decay" not in fingerprint_config(
        pretrain.Config())
    released = fingerprint_config(pretrain.Config(lr_patience=3, lr_decay=0.8))
    assert released["lr_patience"] == 3 and released["lr_decay"] == 0.8
    with pytest.raises(CldgError, match="--lr-decay 0"):
        make_trainer("seq2seq", tmp_path / "bad", [], cfg=TrainConfig(lr_decay=0))


def test_pretrain_stage_writes_the_reference_artifact(prepared_workdir, tmp_path):
    from cldg.config import CommonOptions
    from cldg.data.batching import Limits
    from cldg.data.pairs import read_pairs
    from cldg.stages import pretrain
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.training.evaluation import mean_nll

    workdir, prepared = prepared_workdir
    cfg = pretrain.Config(model="hran", embedding_dim=16, hidden_size=16, batch_size=16, epochs=3, lr=3e-3)
    common = CommonOptions(workdir=tmp_path, seed=3, device="cpu")
    import shutil

    shutil.copytree(workdir / "prepare", tmp_path / "prepare", symlinks=True)
    art = pretrain.run(cfg, common)
    assert art.stage == "reference" and art.path.parent.name == "reference"
    for f in ("model.safetensors", "model.json", "train-log.jsonl", "metrics.json"):
        assert (art.path / f).is_file(), f
    assert not list(art.path.glob("resume*"))  # resume state is removed at commit
    metrics = json.loads((art.path / "metrics.json").read_text())
    log = [json.loads(line) for line in (art.path / "train-log.jsonl").read_text().splitlines()]
    valid_ppl = [math.exp(r["nll"]) for r in log if r["type"] == "valid"]
    assert len(valid_ppl) == 6  # every half epoch for 3 epochs
    assert metrics["best_valid_ppl"] == pytest.approx(min(valid_ppl), rel=1e-4)
    assert valid_ppl[-1] < valid_ppl[0] < V * 10  # it learns
    assert metrics["best_valid_ppl"] < 0.5 * DialogueTokenizer.load(prepared.file("tokenizer.json")).vocab_size

    # the saved model is the best checkpoint: recomputing its valid NLL gives the best value
    model = load_model(art.path)
    assert model.name == "hran" and model.config.hidden_size == 16
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    t = read_pairs(prepared.file("pairs-valid.parquet"))
    from cldg.data.batching import EncodedPairs

    valid = EncodedPairs(tok, t.context, t.response, Limits(3, 40, 120, 40))
    assert math.exp(mean_nll(model, valid, 16, "cpu")) == pytest.approx(metrics["best_valid_ppl"], rel=1e-4)
    # same config again: skipped
    assert pretrain.run(cfg, common).path == art.path


def test_pretrain_cli_transformer_and_missing_prepare(prepared_workdir, tmp_path):
    import shutil

    from cldg.cli import app

    workdir, _ = prepared_workdir
    runner = CliRunner()
    empty = runner.invoke(app, ["pretrain", "--workdir", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "prepare" in empty.output
    shutil.copytree(workdir / "prepare", tmp_path / "prepare", symlinks=True)
    res = runner.invoke(app, ["pretrain", "--workdir", str(tmp_path), "--model", "transformer", "--embedding-dim", "16",
                              "--num-heads", "2", "--num-layers", "1", "--batch-size", "32", "--max-steps", "3",
                              "--positions", "learned", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    art = tmp_path / "reference" / "latest"
    meta = json.loads((art / "model.json").read_text())
    assert meta["name"] == "transformer" and meta["config"]["positions"] == "learned"
    assert meta["config"]["ffn_dim"] == 64
    assert json.loads((art / "metrics.json").read_text())["steps"] == 3


def test_evals_per_epoch_checks_fall_at_fixed_places_in_every_epoch_the_last_on_its_end(tmp_path):
    t = make_trainer("seq2seq", tmp_path, [], cfg=TrainConfig(lr=1e-3, epochs=2, evals_per_epoch=3, patience=9))
    summary = t.fit()  # 8 batches an epoch: checks after batches 3, 6 and 8 of each
    valid = [json.loads(line)["step"] for line in (tmp_path / "train-log.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert valid == [3, 6, 8, 11, 14, 16] and summary["epochs_completed"] == 2


def test_grad_clip_bounds_the_gradient_norm_of_every_step(tmp_path, monkeypatch):
    """--grad-clip reaches the update: every step's gradients are clipped to that norm before Adam sees them."""
    import cldg.training.trainer as trainer_module

    real_clip, norms = torch.nn.utils.clip_grad_norm_, []

    def clip_and_measure(params, max_norm, *a, **kw):
        params = list(params)
        before = real_clip(params, max_norm, *a, **kw)
        norms.append((float(before), float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in params if p.grad is not None]))), max_norm))
        return before

    monkeypatch.setattr(trainer_module.nn.utils, "clip_grad_norm_", clip_and_measure)
    make_trainer("seq2seq", tmp_path, [], cfg=TrainConfig(lr=1e-2, epochs=1, eval_every=8, grad_clip=0.05)).fit()
    assert len(norms) == 8 and all(max_norm == 0.05 for *_, max_norm in norms)
    assert all(before > 0.05 for before, *_ in norms)  # the bound did bite
    assert all(after == pytest.approx(0.05, rel=1e-3) for _, after, _ in norms)


def test_pretrain_size_and_limit_options_reach_the_model_and_the_data(prepared_workdir, tmp_path):
    """The size options build the model they name (model.json, which every later stage loads), the limits are
    saved with the reference (the refcache and evaluation read them there) and --max-*-pairs subsample."""
    import shutil

    from cldg.cli import app
    from cldg.data.batching import Limits

    workdir, _ = prepared_workdir
    shutil.copytree(workdir / "prepare", tmp_path / "prepare", symlinks=True)
    res = CliRunner().invoke(app, [
        "pretrain", "--workdir", str(tmp_path), "--model", "transformer", "--embedding-dim", "16", "--num-heads", "4",
        "--num-layers", "2", "--ffn-dim", "24", "--max-context-turns", "2", "--max-turn-len", "9",
        "--max-context-len", "40", "--max-response-len", "12", "--max-train-pairs", "20", "--max-valid-pairs", "5",
        "--batch-size", "8", "--max-steps", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    art = tmp_path / "reference" / "latest"
    meta = json.loads((art / "model.json").read_text())["config"]
    assert (meta["num_layers"], meta["num_heads"], meta["ffn_dim"]) == (2, 4, 24)
    assert meta["max_positions"] == 40 + 8
    model = load_model(art, "cpu")
    assert len(model.encoder.layers) == 2 and len(model.decoder.layers) == 2
    assert model.encoder.layers[0].linear1.out_features == 24 and model.encoder.layers[0].self_attn.num_heads == 4
    manifest = json.loads((art / "manifest.json").read_text())
    assert Limits.from_config(manifest["config"]) == Limits(2, 9, 40, 12)
    assert (manifest["rows"]["train_pairs"], manifest["rows"]["valid_pairs"]) == (20, 5)
