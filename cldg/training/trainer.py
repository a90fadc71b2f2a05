"""The one training loop: `pretrain`, `contrastive-train` and `train-matcher` each hand it a recipe.

    recipe = MLERecipe(train, valid, batch_size, seed, device)      # cldg.training.recipes
    summary = Trainer(model, TrainOptions(...), run_dir, device, recipe).fit()

The recipe says what is trained (its batches, its loss, its validation; the contract is in
cldg/training/recipes/__init__.py); the trainer owns how: each step, forward + loss under bf16 autocast on
CUDA, a NaN/inf check, backward, gradient clipping, an Adam step; every `1/evals_per_epoch` epoch (or
`eval_every` steps) a validation, a best/last checkpoint and early stopping after `patience` checks without
improvement; the learning rate is multiplied by `lr_decay` when `lr_patience` + 1 checks in a row have not improved
(by default it halves at every check that does not). Checkpoints (model safetensors +
optimizer/RNG state + LR factor + position in the epoch) live in `run_dir/resume/`, so a rerun after a
crash or Ctrl-C continues at the same step with the same batches. Under `torchrun` the model is wrapped
in DDP, each rank takes its share of the batches (the recipe's `batches`), and rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from cldg.errors import CldgError, TrainingDivergedError
from cldg.training import checkpoint, distributed
from cldg.training.options import TrainOptions
from cldg.training.recipes import Recipe


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainOptions, run_dir: Path, device: torch.device, recipe: Recipe,
                 params: Iterable[nn.Parameter] | None = None):
        from cldg.training.options import train_option_problems

        problems = train_option_problems(cfg)
        if problems:
            raise CldgError(problems[0])
        self.cfg, self.run_dir, self.device, self.recipe = cfg, Path(run_dir), device, recipe
        self.model = model.to(device)
        self.batches_per_epoch = max(recipe.batches_per_epoch, 1)
        self.dist = distributed.current()
        self.ddp_model = distributed.wrap(self.model, self.dist, device)
        trainable = list(params) if params is not None else [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)  # stateful LR factor
        # train_seconds: the wall time of every sitting up to the last save, so that a run that spans several
        # (a crash, Ctrl-C, a machine lost) reports its whole time and not its last sitting's
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": math.inf, "bad_checks": 0,
                      "lr_factor": 1.0, "stopped": None, "train_seconds": 0.0, "sittings": 0}
        self._sitting_start, self._seconds_before = time.time(), 0.0
        # evals_per_epoch checks at fixed places in each epoch, the last on its last batch (a step count would
        # drift off the epoch's end when evals_per_epoch does not divide it)
        n = max(cfg.evals_per_epoch, 1)
        self.check_positions = {-(-i * self.batches_per_epoch // n) for i in range(1, n + 1)}
        self.total_steps = self.batches_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.autocast = device.type == "cuda" and cfg.bf16
        self.log_path = self.run_dir / "train-log.jsonl"
        self._step_start = None  # the state from before a step under way (_before_step), for a recipe that asks
        if self.dist.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- checkpoints -------------------------------------------------------------------------------
    def _elapsed(self) -> float | None:
        """Training seconds so far, over every sitting; None for a run resumed from a checkpoint that did not
        keep them (saved by an older cldg), whose earlier sittings' time is unknown."""
        if self._seconds_before is None:
            return None
        return round(self._seconds_before + time.time() - self._sitting_start, 1)

    def _save(self, tag: str) -> None:
        self.state["train_seconds"] = self._elapsed()
        if self.dist.rank == 0:
            checkpoint.save(self.run_dir / "resume", tag, self.model, self.optimizer, self.state)
        distributed.barrier(self.dist)

    def _resume(self) -> bool:
        found = checkpoint.load(self.run_dir / "resume", "last", self.model, self.optimizer)
        if self.dist.enabled:  # rank 0 writes the checkpoint: every rank must see the same one
            step = found["step"] if found else -1
            seen = torch.tensor([step, -step], dtype=torch.long, device=self.device)
            torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
            if seen[0].item() != -seen[1].item():
                raise CldgError(f"{self.run_dir / 'resume'}: the ranks found different checkpoints (steps "
                                f"{-seen[1].item()} to {seen[0].item()}, -1 = none); resuming under DDP needs the "
                                "workdir on a filesystem that every rank sees")
        if found is not None:
            # a checkpoint saved before the time trained was kept: the run's earlier time is unknown, not 0
            self.state.update({"train_seconds": None, "sittings": None}, **found)
            self._apply_lr()
        if self.dist.rank == 0:
            self._trim_log()
        return found is not None

    def _save_best(self, criterion: float) -> None:
        """best.safetensors, and best.json saying which check made it with the weights' sha256, so that a reader
        while training goes on (`cldg evaluate --model RUN.partial`) knows the weights it read are those."""
        digest = checkpoint.save_model_only(self.run_dir / "resume", "best", self.model, hashed=True)
        self._describe_best(self.state["step"], self.state["epoch"], criterion, digest)

    def _describe_best(self, step: int, epoch: int | None, criterion: float, sha256: str) -> None:
        """resume/best.json, and resume/model.json when the checkpoint is the whole model the stage will save (a
        registry model, and a recipe whose `finish` makes no other model of it, as MMI's does): what rebuilds
        the model around best.safetensors, so that it can be scored before training ends."""
        from cldg.models import is_registry_model, model_meta

        resume = self.run_dir / "resume"
        record = {"step": step, "epoch": epoch, "criterion": criterion, "sha256": sha256}
        checkpoint.atomic_write(resume / "best.json", lambda p: p.write_text(json.dumps(record)))
        if getattr(self.recipe, "checkpoint_is_model", True) and is_registry_model(self.model) \
                and not (resume / "model.json").is_file():
            meta = model_meta(self.model)
            checkpoint.atomic_write(resume / "model.json", lambda p: p.write_text(json.dumps(meta, indent=2)))

    def _describe_resumed_best(self) -> None:
        """A resumed run whose best.json is missing or names other weights (its best checkpoint was saved by an
        older cldg) gets one from the loop state: the rerun makes its best checkpoint scorable."""
        best = self.run_dir / "resume" / "best.safetensors"
        if self.dist.rank != 0 or not best.is_file() or self.state.get("best_step") is None:
            return
        digest = hashlib.sha256(best.read_bytes()).hexdigest()
        try:
            recorded = json.loads((best.parent / "best.json").read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != digest or not (best.parent / "model.json").is_file():
            self._describe_best(self.state["best_step"], None, self.state["best"], digest)

    def _trim_log(self) -> None:
        """After a crash the log may hold records past the checkpoint (all of them if it died before its
        first one) and a line cut short by kill -9; the rerun logs those steps again, so keep only whole
        records up to the step it starts from."""
        if not self.log_path.is_file():
            return
        kept = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= self.state["step"]:
                kept.append(line + "\n")
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.log_path)

    def _apply_lr(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr * self.state["lr_factor"]

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.rank == 0:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # -- validation ----------------------------------------------------------------------------------
    def _check(self) -> bool:
        """Validate, keep the best, decay LR / stop early. Returns True when training should stop."""
        self.model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            metrics = self.recipe.validate(self.model)
        self.model.train()
        self.state["checked_step"] = self.state["step"]
        crit = float(metrics["criterion"])
        improved = crit < self.state["best"] - 1e-6
        if improved:
            self.state.update(best=crit, bad_checks=0, best_step=self.state["step"])
            if self.dist.rank == 0:
                self._save_best(crit)
        else:
            self.state["bad_checks"] += 1
            # torch's ReduceLROnPlateau, which the released code uses: decay once more than lr_patience checks in a
            # row have not improved, then count again (lr_patience 0: at every such check)
            if self.state["bad_checks"] % (self.cfg.lr_patience + 1) == 0:
                self.state["lr_factor"] *= self.cfg.lr_decay
                self._apply_lr()
        elapsed = self._elapsed()
        self._log({"type": "valid", "step": self.state["step"], "epoch": self.state["epoch"], **metrics,
                   "improved": improved, "lr": self.cfg.lr * self.state["lr_factor"],
                   **({} if elapsed is None else {"elapsed_s": elapsed})})
        self.last_valid = metrics
        return self.state["bad_checks"] >= self.cfg.patience

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, progress=None, description: str = "train") -> dict[str, Any]:
        from cldg.progress import make_progress

        resumed = self._resume()
        if resumed:
            self._describe_resumed_best()
        self._seconds_before, self._sitting_start = self.state["train_seconds"], time.time()
        if self.state["sittings"] is not None:
            self.state["sittings"] += 1
        if resumed and self.dist.rank == 0:
            from cldg.progress import console

            console.print(f"{description}: resuming from step {self.state['step']} (epoch {self.state['epoch'] + 1}, "
                          f"batch {self.state['batch_in_epoch']}) of {self.run_dir / 'resume'}", highlight=False)
        self.last_valid: dict[str, float] = {}
        own_progress = progress is None
        progress = progress or (make_progress() if self.dist.rank == 0 else _NoProgress())
        t_start = self._sitting_start
        with (progress if own_progress else contextlib.nullcontext()):
            task = progress.add_task(description, total=self.total_steps, completed=self.state["step"], unit="steps",
                                     status="resumed" if resumed else "")
            self.model.train()
            if resumed and self._check_pending():  # stopped during a validation: it runs first
                if self._check():
                    self.state["stopped"] = "early stopping"
                self._save("last")
            stop = self.state["step"] >= self.total_steps or self.state.get("stopped") is not None
            try:
                stop = self._epochs(progress, task, stop, t_start)
            except KeyboardInterrupt:
                self._undo_half_step()
                self._save("last")  # Ctrl-C: the rerun continues from this very step
                raise
            if self.state.get("checked_step") != self.state["step"] and self.state["stopped"] is None:
                self._check()  # the epochs ended between two checks: the final weights still get validated
                self._save("last")
        self.state["stopped"] = self.state.get("stopped") or "done"
        # the last batch of an epoch may end training before the epoch counter moves on
        epochs_completed = self.state["epoch"] + int(self.state["batch_in_epoch"] >= self.batches_per_epoch)
        elapsed = self._elapsed()
        return {"steps": self.state["step"], "epochs_completed": epochs_completed, "best_criterion": self.state["best"],
                "best_step": self.state.get("best_step"), "stopped": self.state["stopped"],
                "last_valid": self.last_valid,
                # the whole time; this sitting's alone when the run began under an older cldg (sittings None)
                "train_seconds": round(elapsed if elapsed is not None else time.time() - t_start, 2),
                "sittings": self.state["sittings"],
                "config": self.cfg.loop_settings()}

    def _before_step(self) -> None:
        """The RNG from before this step (its forward draws dropout masks), and for a recipe whose loss changes
        state itself (recipes/__init__.py, updates_in_loss) the weights and buffers too: what _undo_half_step
        puts back when Ctrl-C stops the step, so that the rerun draws the same masks (it drew others, and a
        resumed run parted from an uninterrupted one)."""
        weights = ({k: v.detach().clone() for k, v in self.model.state_dict().items()}
                   if getattr(self.recipe, "updates_in_loss", False) else None)
        self._step_start = (weights, torch.get_rng_state(),
                            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def _undo_half_step(self) -> None:
        if self._step_start is None:
            return
        weights, rng, cuda_rng = self._step_start
        if weights is not None:
            self.model.load_state_dict(weights)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self._step_start = None

    def _epochs(self, progress, task, stop: bool, t_start: float) -> bool:
        self._window, self._tokens_seen, self._t_start = [], 0, t_start
        while not stop:
            for batch in self.recipe.batches(self.state["epoch"], self.state["batch_in_epoch"]):
                self._before_step()
                batch = batch.to(self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    loss, info = self.recipe.loss(self.ddp_model, batch, self.state["step"])
                self._stop_if_diverged(loss)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                with signals_deferred():  # Ctrl-C inside Adam's update would save half-updated weights
                    self.optimizer.step()
                    self.state["step"] += 1
                    self.state["batch_in_epoch"] += 1
                    self._step_start = None  # the step is whole: Ctrl-C from here on keeps it
                self._record(loss, info, grad_norm, progress, task)
                if self._check_due():
                    if self._check():
                        self.state["stopped"] = "early stopping"
                    self._save("last")
                    stop = self.state["step"] >= self.total_steps or self.state["stopped"] is not None
                    if stop:
                        break
                elif self.cfg.save_every and self.state["step"] % self.cfg.save_every == 0:
                    self._save("last")  # SIGKILL saves nothing: this bounds what one costs
            else:  # the epoch's batches ran out
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
                stop = self.state["epoch"] >= self.cfg.epochs
        return stop

    def _record(self, loss: torch.Tensor, info: dict[str, float], grad_norm, progress, task) -> None:
        """A train-log record (the mean loss since the last one) every 20 steps and at step 1; the progress bar."""
        self._tokens_seen += int(info.get("tokens", 0))
        self._window.append(loss.item())
        step = self.state["step"]
        if step % 20 == 0 or step == 1:
            mean = sum(self._window) / len(self._window)
            self._window.clear()
            rate = self._tokens_seen / max(time.time() - self._t_start, 1e-9)
            self._log({"type": "train", "step": step, "loss": mean, "grad_norm": float(grad_norm),
                       **{k: float(v) for k, v in info.items()}})
            shown = f"loss {mean:.3f}" + (f" ppl {math.exp(min(info['nll'], 50)):.1f}" if "nll" in info else "")
            shown += "".join(f" {k} {info[k]:.3f}" for k in getattr(self.recipe, "progress_keys", ()) if k in info)
            progress.update(task, status=f"{shown} {rate:,.0f} tok/s")
        progress.update(task, completed=step)

    def _stop_if_diverged(self, loss: torch.Tensor) -> None:
        if not self._all_finite(loss):
            raise TrainingDivergedError(
                f"loss became {loss.item()} at step {self.state['step']} (on this rank or another); the last "
                f"good checkpoint is kept in {self.run_dir / 'resume'} - lower --lr or check the data")

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Is the loss finite on every rank? All ranks must stop together, or the others hang in the next
        all-reduce."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(bad)
        return bad.item() == 0

    def _check_pending(self) -> bool:
        """A validation was due at the checkpoint's step but did not finish (Ctrl-C or a crash during it)."""
        return (self._check_due() and self.state.get("checked_step") != self.state["step"]
                and self.state.get("stopped") is None)

    def _check_due(self) -> bool:
        """Validation after this step: every eval_every steps if set, else at the epoch's check positions;
        always after the last step."""
        step = self.state["step"]
        if step >= self.total_steps:
            return step > 0
        if self.cfg.eval_every:
            return step % self.cfg.eval_every == 0
        return self.state["batch_in_epoch"] in self.check_positions

    def load_best(self) -> None:
        """Put the best checkpoint's weights into the model (falls back to the current weights)."""
        checkpoint.load_model_only(self.run_dir / "resume", "best", self.model)


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (in the main thread; elsewhere
    signals are not delivered anyway), so that an optimizer step and the step counter move together. The
    handlers are swapped with both signals blocked, so none lands between two swaps and is lost."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    both = {signal.SIGINT, signal.SIGTERM}
    arrived: list[int] = []
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, both)
    try:
        previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in both}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        try:
            for s, handler in previous.items():
                signal.signal(s, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one arriving meanwhile goes to the restored handler
        if arrived:  # to its own handler: Python's SIGINT one raises KeyboardInterrupt, cldg's SIGTERM one Terminated
            signal.raise_signal(arrived[0])


class _NoProgress(contextlib.nullcontext):
    """What ranks other than 0 show: nothing."""

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass
