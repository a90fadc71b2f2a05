"""The pipeline's stages, in order: the one list that the CLI, `cldg run` and the artifact store read.

Each stage is a module `cldg/stages/<module>.py` with a `Config` dataclass (its options, declared once for the
command line and the TOML table) and `run(cfg, common)`. An approach registered without a stage of its own
(`cldg/approaches/`) gets one here, made by the generic module `cldg/stages/train.py` (`stage_module`). This
package file stays free of torch and every other heavy import, so that `cldg --help` is instant.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    command: str                # the cldg subcommand
    module: str                 # cldg.stages.<module>
    table: str                  # its TOML table in a pipeline config
    artifacts: tuple[str, ...]  # the artifact directories (WORKDIR/<name>/) it writes
    approach: str = ""          # the approach that the generic module `train` trains in this stage


def _approach_stages() -> tuple[Stage, ...]:
    """One stage per approach without a stage of its own, trained by cldg/stages/train.py."""
    from cldg.approaches import registered

    return tuple(Stage(a.command, "train", a.command.replace("-", "_"), (a.makes,), approach=a.name)
                 for a in registered() if a.generic)


_FIXED: tuple[Stage, ...] = (
    Stage("prepare", "prepare", "prepare", ("prepare",)),
    Stage("index", "index", "index", ("index",)),
    Stage("train-matcher", "train_matcher", "train_matcher", ("matcher",)),
    Stage("mine-samples", "mine", "mine_samples", ("samples",)),
    Stage("pretrain", "pretrain", "pretrain", ("reference",)),
    Stage("contrastive-train", "contrastive", "contrastive_train", ("refcache", "contrastive")),
)
STAGES: tuple[Stage, ...] = _FIXED + _approach_stages() + (Stage("evaluate", "evaluate", "evaluate", ("eval",)),)
BY_TABLE = {s.table: s for s in STAGES}
ARTIFACT_ORDER = [a for s in STAGES for a in s.artifacts]


def maker(artifact: str) -> str:
    """The command that makes an artifact directory, for error messages ('run `cldg pretrain` first')."""
    for s in STAGES:
        if artifact in s.artifacts:
            return f"cldg {s.command}"
    return f"cldg {artifact}"


def stage_module(stage: Stage):
    """What runs a stage: its module (`Config`, `run`, docstring), or for an approach's generic stage the object
    that cldg/stages/train.py makes for it (the same three)."""
    module = importlib.import_module(f"{__name__}.{stage.module}")
    return module.for_approach(stage.approach) if stage.approach else module
