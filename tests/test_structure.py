"""Issue 14's structural rules: options declared once, one trainer shape, short stage functions, and which
layers may make artifacts."""
from __future__ import annotations

import dataclasses

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


def test_the_approach_registry_lists_mle_and_contrastive_without_torch():
    import subprocess
    import sys

    code = ("import sys; from cldg.approaches import approaches; print([a.name for a in approaches()], "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['mle', 'contrastive'] False"

    from cldg import pipeline
    from cldg.approaches import approaches, model_stages
    from cldg.stages import STAGES

    stages = {s.command: s for s in STAGES}
    for a in approaches():  # each names the stage that trains it, the options it inherits, a recipe, its model
        module = __import__(f"cldg.stages.{stages[a.command].module}", fromlist=["Config"])
        assert issubclass(module.Config, a.options) and a.makes in stages[a.command].artifacts
        recipe = a.recipe_class()
        assert all(callable(getattr(recipe, m)) for m in ("batches", "loss", "validate"))
    assert model_stages() == ("reference", "contrastive")
    steps = pipeline.plan_steps({}, "test")
    assert [label for _, _, label, _ in steps if label.startswith("evaluate")] == [
        "evaluate (reference)", "evaluate (contrastive)"]
