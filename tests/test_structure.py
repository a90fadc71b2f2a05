"""Issue 14's structural rules: options declared once, one trainer shape, short stage functions, and which
layers may make artifacts."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from typer.main import get_command


def test_decoding_options_are_declared_once_for_evaluate_chat_and_the_library():
    from cldg.cli import ChatDecodingOptions, app
    from cldg.decoding.options import DecodingOptions
    from cldg.decoding.search import DecodeConfig
    from cldg.stages import evaluate

    names = [f.name for f in dataclasses.fields(DecodingOptions)]
    assert issubclass(evaluate.Config, DecodingOptions)
    chat = {p.name for p in get_command(app).commands["chat"].params}
    assert set(names) <= chat and [f.name for f in dataclasses.fields(ChatDecodingOptions)] == names
    # the library's DecodeConfig has the same defaults (its `method` is the option `decoding`)
    assert DecodingOptions().decode_config() == DecodeConfig()


def test_the_approach_registry_lists_mle_and_contrastive_first_then_the_baselines_without_torch():
    import ast
    import subprocess
    import sys

    code = ("import sys; from cldg.approaches import approaches; print([a.name for a in approaches()], "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    names, torch_loaded = out.rsplit(" ", 1)
    names = ast.literal_eval(names)
    # the pipeline's two first, then the baselines (several engineers add them at once: the set grows) by name
    assert names[:2] == ["mle", "contrastive"] and names[2:] == sorted(names[2:])
    assert {"adversarial", "cvae", "deeprl", "mmi"} <= set(names)
    assert torch_loaded == "False"

    from cldg import pipeline
    from cldg.approaches import approaches, model_stages
    from cldg.stages import STAGES, stage_module

    stages = {s.command: s for s in STAGES}
    for a in approaches():  # each names the stage that trains it, the options it inherits, a recipe, its model
        module = stage_module(stages[a.command])
        assert issubclass(module.Config, a.options) and a.makes in stages[a.command].artifacts
        recipe = a.recipe_class()
        assert all(callable(getattr(recipe, m)) for m in ("batches", "loss", "validate"))
        if a.generic:  # the generic stage's hooks
            assert all(callable(getattr(recipe, m)) for m in ("setup", "finish", "describe"))
    assert model_stages()[:2] == ("reference", "contrastive")
    assert {"adversarial", "cvae", "deeprl", "mmi"} <= set(model_stages())
    # a config without a baseline's table trains and evaluates what it did before the baselines
    steps = pipeline.plan_steps({}, "test")
    assert [label for _, _, label, _ in steps if label.startswith("evaluate")] == [
        "evaluate (reference)", "evaluate (contrastive)"]
    steps = pipeline.plan_steps({"mmi_train": {}}, "test")
    assert [label for _, _, label, _ in steps][-4:] == [
        "mmi-train", "evaluate (reference)", "evaluate (contrastive)", "evaluate (mmi)"]


def test_no_stage_function_is_longer_than_60_lines():
    """A stage's run reads top to bottom: resolve inputs, build the recipe (or the work), fit, commit."""
    import ast

    import cldg

    stages = Path(cldg.__file__).parent / "stages"
    long = []
    for path in sorted(stages.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_the_trainer_has_one_shape_and_every_stage_trains_through_a_recipe():
    import inspect

    from cldg.training.trainer import Trainer

    assert list(inspect.signature(Trainer).parameters) == ["model", "cfg", "run_dir", "device", "recipe", "params"]
    import ast

    import cldg

    root = Path(cldg.__file__).parent
    calls = 0
    for path in [*(root / "stages").glob("*.py"), root / "matching" / "training.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Trainer":
                calls += 1  # model, options, run_dir, device, recipe: no loss or batch callables
                assert len(node.args) == 5 and not node.keywords, f"{path}:{node.lineno}"
    assert calls == 4  # pretrain, contrastive-train, the approaches' generic stage, train-matcher (train_msn)
