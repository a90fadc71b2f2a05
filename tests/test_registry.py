"""One stage registry, one module of choice lists, and the import rules between the layers."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cldg

PACKAGE = Path(cldg.__file__).parent
LIBRARY = ("data", "text", "models", "training", "matching", "retrieval", "decoding", "metrics")


def test_cli_run_and_store_read_the_one_stage_registry():
    from typer.main import get_command

    from cldg import pipeline, status
    from cldg.cli import app
    from cldg.stages import STAGES, maker

    commands = set(get_command(app).commands)
    assert {s.command for s in STAGES} <= commands
    assert [t for t, _, _ in pipeline.PIPELINE] == [s.table for s in STAGES]
    assert status.STAGE_ORDER[:2] == ["prepare", "index"] and "refcache" in status.STAGE_ORDER
    assert maker("reference") == "cldg pretrain" and maker("refcache") == "cldg contrastive-train"
    from cldg.stages import stage_module

    for s in STAGES:  # every registered module is a stage: a Config and a run (an approach's, from its module)
        module = stage_module(s)
        assert hasattr(module, "Config") and callable(module.run), s


def test_tools_are_not_stages():
    stage_files = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__"}
    from cldg.stages import STAGES

    assert stage_files == {s.module for s in STAGES}
    assert {"compare", "human_eval", "inspect_samples"} <= {p.stem for p in (PACKAGE / "tools").glob("*.py")}


def test_choices_are_torch_free_and_shared_with_the_library():
    code = "import sys, cldg.choices; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    from cldg import choices
    from cldg.data.loaders import FORMATS
    from cldg.stages import contrastive, evaluate, pretrain
    from cldg.training.losses import LOSS_VARIANTS

    assert LOSS_VARIANTS is choices.LOSS_VARIANTS is contrastive.LOSS_VARIANTS
    assert FORMATS is choices.CORPUS_FORMATS and evaluate.INPUT_FORMATS is choices.INPUT_FORMATS
    assert pretrain.MODEL_CHOICES is choices.MODELS
    from cldg.decoding.search import METHODS

    assert METHODS is choices.DECODING_METHODS
    from cldg import models

    models._load_all()
    # every listed model is registered, and only those
    assert set(models.MODELS) == set(choices.MODELS) | set(choices.APPROACH_MODELS)


def _cldg_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "cldg" or n.startswith("cldg.")}


def test_the_library_imports_neither_stages_tools_nor_the_cli():
    offenders = []
    for sub in LIBRARY:
        for path in (PACKAGE / sub).rglob("*.py"):
            for name in _cldg_imports(path):
                if name.startswith(("cldg.stages", "cldg.tools", "cldg.cli", "cldg.pipeline")):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def _cldg_modules(path: Path) -> set[str]:
    """Every cldg module a file imports, `from cldg import x` read as cldg.x."""
    names = _cldg_imports(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "cldg" and node.level == 0:
            names.update(f"cldg.{a.name}" for a in node.names)
    return names


def test_only_stages_make_artifacts_the_library_never_imports_the_store():
    """The reference cache is written by contrastive-train, models are found by cldg.model_artifacts: no module of
    the library (models, training, ...) imports the artifact store, its status view or the stages."""
    store = ("cldg.artifacts", "cldg.status", "cldg.model_artifacts", "cldg.stages")
    assert [f"{path.relative_to(PACKAGE)} imports {name}" for sub in LIBRARY for path in (PACKAGE / sub).rglob("*.py")
            for name in _cldg_modules(path) if name.startswith(store)] == []
    assert not (PACKAGE / "models" / "resolve.py").exists()


def test_approaches_command_shows_every_approach_whole_at_80_columns():
    from typer.testing import CliRunner

    from cldg.approaches import approaches
    from cldg.cli import app

    result = CliRunner().invoke(app, ["approaches"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for a in approaches():
        assert f"{a.name} cldg {a.command}" in text
        assert " ".join(a.description.split()) in text  # not cut to fit a column
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_approach_modules_are_looked_for_once_so_a_module_added_mid_run_cannot_appear_halfway(monkeypatch):
    """The stage list is built from the approach modules at start; a later call must not scan the package again
    (a module added to the checkout during a long `cldg run` once made its evaluate step fail)."""
    import cldg.approaches as registry
    from cldg.stages import STAGES

    before = [a.name for a in registry.approaches()]

    def no_rescan(*args, **kwargs):
        raise AssertionError("the approach package was scanned again")

    monkeypatch.setattr(registry.pkgutil, "iter_modules", no_rescan)
    assert [a.name for a in registry.approaches()] == before
    assert {a.command for a in registry.approaches()} <= {s.command for s in STAGES}


def test_a_revised_approach_gets_new_fingerprints_and_the_others_keep_theirs(tmp_path):
    """Fingerprints name options, not code: an approach whose training a fix changed declares a revision, so
    artifacts trained before the fix are not reused; approaches never revised fingerprint as before."""
    import dataclasses

    from cldg.approaches import get_approach
    from cldg.artifacts import compute_fingerprint
    from cldg.config import CommonOptions, fingerprint_config
    from cldg.stages.train import SCHEMA, approach_config, for_approach

    common = CommonOptions(workdir=tmp_path, seed=13)
    for name in ("mle", "unlikelihood"):  # never revised: the fingerprint config of before revisions existed
        approach = get_approach(name)
        cfg = for_approach(name).Config()
        assert approach.revision == 1
        assert approach_config(approach, cfg, common) == fingerprint_config(cfg) | {"seed": 13, "approach": name}
    for name in ("cvae", "dialogwae", "adversarial"):  # revised by the turn-packing fixes
        approach = get_approach(name)
        cfg = for_approach(name).Config()
        config = approach_config(approach, cfg, common)
        assert config["revision"] == approach.revision >= 2
        before = approach_config(dataclasses.replace(approach, revision=1), cfg, common)
        assert "revision" not in before
        assert compute_fingerprint(name, SCHEMA, config, {}) != compute_fingerprint(name, SCHEMA, before, {})


def test_a_model_trained_before_a_revision_is_named_when_it_is_used_and_revisions_belong_to_generic_approaches(
        tmp_path):
    from cldg.approaches import register_approach
    from cldg.artifacts import Artifact
    from cldg.config import fingerprint_config
    from cldg.model_artifacts import revision_behind
    from cldg.stages import pretrain

    def model(stage, config):
        return Artifact(stage, "f" * 16, tmp_path / stage, {"config": config})

    assert "revision 2 of cvae" in revision_behind(model("cvae", {"seed": 1}))
    assert revision_behind(model("cvae", {"revision": 2})) is None
    assert "hred trained before revision 2" in revision_behind(model("reference", {"model": "hred"}))
    assert revision_behind(model("reference", {"model": "seq2seq"})) is None
    # pretrain --model hred fingerprints the model's revision; a model never revised fingerprints as before
    assert fingerprint_config(pretrain.Config(model="hred"))["model_revision"] == 2
    assert "model_revision" not in fingerprint_config(pretrain.Config(model="seq2seq"))
    assert revision_behind(model("reference", fingerprint_config(pretrain.Config(model="hred")))) is None

    class Staged:  # an approach with a stage of its own fingerprints its artifacts there: a revision is refused
        options, recipe, makes, needs, command, revision = object, "m:C", "x", (), "x-stage", 2

    with pytest.raises(ValueError, match="generic stage"):
        register_approach("not-generic-with-a-revision")(Staged)
