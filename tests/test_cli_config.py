"""CLI conventions: generated stage options, TOML merging, one-line errors and exit codes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cldg.cli import STAGES, app
from cldg.config import config_from_table, fingerprint_config, option
from cldg.errors import CldgError

runner = CliRunner()


@dataclasses.dataclass
class DemoConfig:
    turns: int = option(3, "turns")
    mode: str = option("a", "mode", choices=("a", "b"))
    threads: int = option(2, "threads", fingerprint=False)
    path: Path | None = option(None, "a path")


def test_config_from_table_validates_types_choices_and_keys():
    cfg = config_from_table(DemoConfig, {"turns": 5, "mode": "b", "path": "x/y"}, "c.toml [demo]")
    assert cfg.turns == 5 and cfg.mode == "b" and cfg.path == Path("x/y")
    with pytest.raises(CldgError, match=r"c.toml \[demo\]: turns = 'five' should be of type int"):
        config_from_table(DemoConfig, {"turns": "five"}, "c.toml [demo]")
    with pytest.raises(CldgError, match="is not one of a, b"):
        config_from_table(DemoConfig, {"mode": "z"}, "c.toml [demo]")
    with pytest.raises(CldgError, match="unknown key 'turn'"):
        config_from_table(DemoConfig, {"turn": 1}, "c.toml [demo]")


def test_fingerprint_config_leaves_out_runtime_only_fields():
    fp = fingerprint_config(DemoConfig(threads=8))
    assert "threads" not in fp and fp["turns"] == 3


def test_the_cli_starts_without_heavy_libraries():
    """`cldg --help` must stay fast: stage modules import torch, pyserini and friends inside run()."""
    import subprocess
    import sys

    from cldg.stages import contrastive
    from cldg.training.losses import LOSS_VARIANTS

    code = ("import sys, cldg.cli; print(' '.join(m for m in ('torch', 'pyserini', 'datasets', 'numpy', "
            "'pyarrow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    assert contrastive.LOSS_VARIANTS == LOSS_VARIANTS  # written out in the stage so that it stays torch-free


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, _, _ in STAGES:
        assert name in result.output
    for name in ("run", "status", "compare", "chat", "human-eval", "inspect-samples"):
        assert name in result.output


@pytest.mark.parametrize("name", [s[0] for s in STAGES])
def test_each_stage_has_help_with_common_options(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    for opt in ("--workdir", "--config", "--force", "--seed", "--device"):
        assert opt in result.output


def test_bad_toml_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[prepare\nx = 1\n")
    result = runner.invoke(app, ["prepare", "--config", str(bad), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "bad.toml: invalid TOML" in result.output
    assert "Traceback" not in result.output


def test_unknown_key_in_stage_table_names_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[prepare]\nnot_an_option = 1\n")
    result = runner.invoke(app, ["prepare", "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "[prepare]: unknown key 'not_an_option'" in result.output


def test_status_on_missing_workdir_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["status", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no such workdir" in result.output


def test_run_rejects_unknown_table_before_running_anything(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'workdir = "{tmp_path / "w"}"\n[pretrian]\nmodel = "hred"\n')
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "unknown table [pretrian]" in result.output
    assert not (tmp_path / "w").exists()


def test_progress_shows_rate_and_eta_for_steps_and_neither_for_the_pipelines_uneven_stages():
    """A training's bar gives steps/s and an ETA; the pipeline's bar, whose stages take seconds to hours, gives
    neither (it said "51.3 stages/s ... eta 0:00:01" with hours of training ahead)."""
    from cldg.progress import EtaColumn, RateColumn, make_progress

    p = make_progress()
    steps = p.add_task("train", total=100, unit="steps")
    stages = p.add_task("pipeline", total=8, unit="stages", uneven=True)
    p.advance(steps, 2)
    p.advance(stages, 6)
    shown = [c for c in p.columns if isinstance(c, (RateColumn, EtaColumn))]
    rows = {t.description: [str(c.render(t)) for c in shown] for t in p.tasks}
    assert rows["train"][0].endswith("steps/s") and rows["train"][1].startswith("eta ")
    assert rows["pipeline"] == ["", ""]
