"""The pipeline's stages, in order: the one list that the CLI, `cldg run` and the artifact store read.

Each stage is a module `cldg/stages/<module>.py` with a `Config` dataclass (its options, declared once for the
command line and the TOML table) and `run(cfg, common)`. This package file stays free of torch and every
other heavy import, so that `cldg --help` is instant.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    command: str                # the cldg subcommand
    module: str                 # cldg.stages.<module>
    table: str                  # its TOML table in a pipeline config
    artifacts: tuple[str, ...]  # the artifact directories (WORKDIR/<name>/) it writes


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "prepare", "prepare", ("prepare",)),
    Stage("index", "index", "index", ("index",)),
    Stage("train-matcher", "train_matcher", "train_matcher", ("matcher",)),
    Stage("mine-samples", "mine", "mine_samples", ("samples",)),
    Stage("pretrain", "pretrain", "pretrain", ("reference",)),
    Stage("contrastive-train", "contrastive", "contrastive_train", ("refcache", "contrastive")),
    Stage("evaluate", "evaluate", "evaluate", ("eval",)),
)
BY_TABLE = {s.table: s for s in STAGES}
ARTIFACT_ORDER = [a for s in STAGES for a in s.artifacts]


def maker(artifact: str) -> str:
    """The command that makes an artifact directory, for error messages ('run `cldg pretrain` first')."""
    for s in STAGES:
        if artifact in s.artifacts:
            return f"cldg {s.command}"
    return f"cldg {artifact}"
