"""The generic training stage: `cldg <approach>-train` for every approach registered without a stage of its own.

For approach A (cldg/approaches/A.py) it resolves A's inputs (`--<need>-dir`, default the latest; the prepare
artifact behind them), fingerprints (approach name, options, seed, input fingerprints), lets A's recipe build the
model and itself (`setup`), fits with the Trainer (checkpoints, resume after Ctrl-C, early stopping, a progress bar
with the recipe's own quantities), lets the recipe finish (`finish`: the model to save and its metrics) and commits
the artifact A `makes`: `model.safetensors`, `model.json`, `train-log.jsonl`, `metrics.json`, which `evaluate
--model`, `chat` and `compare` take like the reference's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cldg.artifacts import Artifact, ArtifactStore
from cldg.config import CommonOptions, fingerprint_config, option, options_from
from cldg.training.options import TrainOptions

SCHEMA = 1
INPUT_SCHEMA = 1  # every artifact an approach may need (prepare, reference, samples, ...) is at schema 1


class ApproachStage:
    """What the CLI and `cldg run` need of a stage module (`Config`, `run`, a docstring), for one approach."""

    def __init__(self, approach: Any, config: type, doc: str):
        self.approach = approach  # cldg.approaches.Approach
        self.Config = config      # the approach's options + one `<need>_dir` option per input
        self.__doc__ = doc

    def run(self, cfg, common: CommonOptions) -> Artifact:
        return run_approach(self.approach, cfg, common)


def approach_config(approach: Any, cfg, common: CommonOptions) -> dict:
    """What the model artifact's fingerprint names: the options, seed, approach and its revision when above 1
    (only then: the fingerprints of approaches never revised stay as they were)."""
    config = fingerprint_config(cfg) | {"seed": common.seed, "approach": approach.name}
    if approach.revision > 1:
        config["revision"] = approach.revision
    return config


def for_approach(name: str) -> ApproachStage:
    from cldg.approaches import get_approach

    approach = get_approach(name)
    dirs = [(f"{need}_dir", Path | None, option(None, f"{need.capitalize()} artifact (default: latest).",
                                                fingerprint=False)) for need in approach.needs]
    config = dataclasses.make_dataclass(f"{approach.options.__name__}Stage", dirs, bases=(approach.options,))
    doc = f"{approach.description}\n\n" + (__doc__ or "").replace("approach A (cldg/approaches/A.py)",
                                                                  f"`{name}` (cldg/approaches/{name}.py)")
    return ApproachStage(approach, config, doc)


def resolve_inputs(store: ArtifactStore, approach, cfg) -> dict[str, Artifact]:
    """{name: artifact} for every input, with the prepare artifact first: the named one, or the one behind the
    first model input. Every input must come from that prepare artifact."""
    from cldg.errors import CldgError

    found = {need: store.resolve_input(need, getattr(cfg, f"{need}_dir"), INPUT_SCHEMA, f"--{need}-dir")
             for need in approach.needs}
    prepared = found.get("prepare")
    for need, art in found.items():
        source = art.manifest.get("inputs", {}).get("prepare")
        if source is None:
            continue
        if prepared is None:
            prepared = Artifact.load(Path(source["path"]))
        elif source["fingerprint"] != prepared.fingerprint:
            raise CldgError(f"{art.path}: made from another prepare artifact than {prepared.path}; "
                            f"pass --{need}-dir built on the same corpus")
    if prepared is None:
        raise CldgError(f"approach {approach.name}: none of its inputs {approach.needs} names a prepare artifact")
    return {"prepare": prepared, **found}


def check_options(approach, cfg) -> None:
    """Bad values stop the stage with one line naming the option (the approach's `problems()`, if any)."""
    from cldg.errors import CldgError

    problems = cfg.problems() if callable(getattr(cfg, "problems", None)) else []
    if problems:
        raise CldgError(f"{approach.command}: {problems[0]}")


def run_approach(approach, cfg, common: CommonOptions) -> Artifact:
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.training.recipes import TrainInputs
    from cldg.training.trainer import Trainer

    check_options(approach, cfg)
    store = ArtifactStore(common.workdir)
    inputs = resolve_inputs(store, approach, cfg)
    config = approach_config(approach, cfg, common)
    with store.begin(approach.makes, SCHEMA, config, inputs, force=common.force) as run:
        if run.existing:
            console.print(f"{approach.command}: complete artifact {run.existing.path} found - skipped")
            return run.existing
        set_seed(common.seed)
        device = resolve_device(common.device)
        train_inputs = TrainInputs(inputs["prepare"].path, {k: a.path for k, a in inputs.items()},
                                   {k: a.config for k, a in inputs.items()})
        model, recipe = approach.recipe_class().setup(cfg, train_inputs, common.seed, device)
        console.print(f"{approach.command}: {recipe.describe()}, on {device}")
        trainer = Trainer(model, options_from(TrainOptions, cfg), run.dir, device, recipe)
        summary = trainer.fit(description=approach.name)
        trainer.load_best()
        return commit_model(run, approach, *recipe.finish(model, summary), summary)


def commit_model(run, approach, model, metrics: dict, summary: dict) -> Artifact:
    """Write the model and metrics.json (the recipe's figures, then the trainer's summary) and commit."""
    import json

    from cldg.models import save_model
    from cldg.progress import console

    save_model(run.dir, model)
    metrics = {"approach": approach.name, **metrics, "best_valid_criterion": summary["best_criterion"], **summary}
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    console.print(f"{approach.command}: best valid criterion {summary['best_criterion']:.4f} at step "
                  f"{summary['best_step']} ({summary['stopped']}, {summary['steps']} steps)")
    parameters = sum(p.numel() for p in model.parameters())
    return run.commit(rows={"steps": summary["steps"]}, timings={"train_s": summary["train_seconds"]},
                      extra={"model": {"name": model.name, "parameters": parameters}, "approach": approach.name})
