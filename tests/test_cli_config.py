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
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["status", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "a file, not a workdir" in result.output
    result = runner.invoke(app, ["prepare", "--input", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and f"--input {tmp_path}: a folder, not a file" in " ".join(result.output.split())


def test_run_rejects_unknown_table_before_running_anything(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'workdir = "{tmp_path / "w"}"\n[pretrian]\nmodel = "hred"\n')
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "unknown table [pretrian]" in result.output
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("table,expected", [
    ('[run]\nevaluate_models = "contrastive"\n', "[run] evaluate_models: expected a list of names"),
    ('[run]\nevaluate_models = ["contrastve"]\n', "'contrastve' is not a model"),
    ('[run]\nskip = "index"\n', "[run] skip: expected a list of names"),
    ('[evaluate]\nbeam_size = 0\n', "[evaluate]: --beam-size must be at least 1"),
    ('device = "tpu"\n', "--device 'tpu': expected auto, cpu or cuda[:N]"),
    ('torch_threads = -3\n', "--torch-threads -3: must be at least 1"),
    ('[pretrain]\nsave_every = -1\n', "[pretrain]: --save-every -1: must be 0"),
    ('[contrastive_train]\npatience = 0\n', "[contrastive_train]: --patience 0: must be at least 1"),
])
def test_run_checks_run_lists_stage_values_and_common_options_before_running_anything(tmp_path, table, expected):
    """A bare string where a list belongs was read letter by letter (an evaluate step per letter), and a bad
    evaluate value stopped the run only after every training: now each is one line before anything runs."""
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'workdir = "{tmp_path / "w"}"\n' + table)
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "w").exists()


def test_run_takes_approach_names_for_the_models_to_evaluate(tmp_path):
    from cldg.pipeline import plan_steps

    labels = [label for _, _, label, _ in plan_steps({"run": {"evaluate_models": ["mle", "contrastive"]}}, "p.toml")]
    assert "evaluate (reference)" in labels and "evaluate (contrastive)" in labels
    assert not [label for _, _, label, _ in plan_steps({"run": {"evaluate_models": []}}, "p.toml")
                if label.startswith("evaluate")]


def test_run_skip_leaves_out_the_stages_it_names_and_a_bm25_config_needs_no_matcher():
    from cldg.pipeline import plan_steps

    tables = [t for t, *_ in plan_steps({"run": {"skip": ["index", "train_matcher"]}}, "p.toml")]
    assert "index" not in tables and "train_matcher" not in tables
    assert tables[:3] == ["prepare", "mine_samples", "pretrain"]
    assert "train_matcher" not in [t for t, *_ in plan_steps({"mine_samples": {"matcher": "bm25"}}, "p.toml")]
    assert "train_matcher" in [t for t, *_ in plan_steps({}, "p.toml")]
    with pytest.raises(CldgError, match="skip names unknown stage tables"):
        plan_steps({"run": {"skip": ["indx"]}}, "p.toml")


def test_signals_deferred_hands_a_signal_to_its_own_handler_once_the_block_ends():
    import signal

    from cldg.training.trainer import signals_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("after the signal")  # the block runs to its end first
    assert done == ["after the signal"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stage_commands_check_their_config_file_and_common_values(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[evaluatee]\nlimit = 3\n")  # a misspelt table was ignored without a word
    result = runner.invoke(app, ["evaluate", "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "unknown table [evaluatee]" in result.output
    for args, expected in ((["--torch-threads", "-3"], "--torch-threads -3: must be at least 1"),
                           (["--device", "CPU"], "--device 'CPU': expected auto, cpu or cuda[:N]")):
        result = runner.invoke(app, ["pretrain", "--workdir", str(tmp_path / "w"), *args])
        assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    result = runner.invoke(app, ["prepare", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "OMP_NUM_THREADS='abc': expected a number of threads" in result.output


def test_help_shows_bracketed_text_as_written():
    """Help is rich markup: "[pretrain]" and "[run] seeds" vanished as unknown tags. (rich takes its width from
    COLUMNS, not from CliRunner's terminal_width: wide, so that no phrase is broken over two lines.)"""
    result = runner.invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert "TOML table: [pretrain]" in result.output and "cuda[:N]" in result.output
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "(overrides [run] seeds)" in result.output
    result = runner.invoke(app, ["ablate", "--help"], env={"COLUMNS": "200"})
    assert "[ablate] ks" in result.output


def test_a_stage_that_fails_before_writing_anything_leaves_no_partial(tmp_path):
    """A malformed corpus stops prepare inside its stage: no empty .partial/ is left for status to call an
    interrupted run."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["a"')
    result = runner.invoke(app, ["prepare", "--input", str(bad), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "bad.jsonl:1: invalid JSON" in result.output
    assert not list((tmp_path / "w" / "prepare").glob("*.partial"))
    result = runner.invoke(app, ["status", str(tmp_path / "w")])
    assert "interrupted" not in result.output


def test_what_a_command_shows_goes_to_stdout_and_its_errors_to_stderr(tmp_path):
    """`cldg status > s.txt` and `cldg approaches > a.txt` hold the table (it went to stderr, the file was empty)."""
    import subprocess
    import sys

    (tmp_path / "w").mkdir()
    res = subprocess.run([sys.executable, "-m", "cldg.cli", "approaches"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Learning approaches" in res.stdout and "contrastive" in res.stdout
    res = subprocess.run([sys.executable, "-m", "cldg.cli", "status", str(tmp_path / "none")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "no such workdir" in res.stderr and not res.stdout


@pytest.mark.parametrize("args", [["status", "--json", "WORKDIR"], ["approaches", "--json"]])
def test_a_reader_that_goes_away_is_not_an_internal_error(tmp_path, args):
    """`cldg status --json | head -1`: the pipe closes before cldg writes; it was 'internal error:
    BrokenPipeError', exit 1 (approaches: exit 1 and nothing said). Now exit 141, as a SIGPIPE'd tool, silent."""
    import subprocess
    import sys

    (tmp_path / "w").mkdir()
    cmd = [sys.executable, "-m", "cldg.cli", *[str(tmp_path / "w") if a == "WORKDIR" else a for a in args]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before cldg has started
    err = proc.stderr.read()
    assert proc.wait() == 141 and b"error" not in err and b"Traceback" not in err, err


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


def test_help_at_80_columns_shows_every_option_name_whole():
    """rich cut 16 option names to "--refresh-refere…" at 80 columns (the long and the negative names each had a
    column); now the negative form sits under its option and no name or default is cut."""
    import typer.main

    group = typer.main.get_command(app)
    commands = [[name] for name in group.commands if name != "human-eval"]
    commands += [["human-eval", name] for name in group.commands["human-eval"].commands]
    for path in commands:
        command = group
        for name in path:
            command = command.commands[name]
        result = runner.invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, (path, result.output)
        assert max(len(line) for line in result.output.splitlines()) <= 80
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("--"):
                    assert opt in result.output, (path, opt)


def test_run_options_and_the_run_table_reach_the_plan(tmp_path, monkeypatch):
    """`[run] seeds` and `seed_stages` from the TOML, and `run --seeds/--force/--device/--workdir` over them, are
    what the pipeline plans with (which seeds, which stages rerun per seed, the common options)."""
    import cldg.pipeline as pipeline

    plans = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, **kw: plans.append(pipeline.load_plan(config, **kw)))
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'workdir = "{tmp_path / "w"}"\nseed = 2\ndevice = "auto"\n'
                   '[run]\nseeds = [3, 4]\nseed_stages = ["contrastive_train", "evaluate"]\n')
    assert runner.invoke(app, ["run", str(cfg)]).exit_code == 0
    plan = plans[-1]
    assert plan.seeds == [3, 4] and plan.seed_stages == {"contrastive_train", "evaluate"}
    assert plan.common.workdir == tmp_path / "w" and not plan.common.force and plan.common.device == "auto"
    assert "pretrain" in [s.table for s in plan.steps]  # built once: not a seed stage here

    result = runner.invoke(app, ["run", str(cfg), "--seeds", "7", "--force", "--device", "cpu",
                                 "--workdir", str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    plan = plans[-1]
    assert plan.seeds == [7] and plan.common.force and plan.common.device == "cpu"
    assert plan.common.workdir == tmp_path / "other"

    cfg.write_text(f'workdir = "{tmp_path / "w"}"\nseed = 2\n')  # no [run]: the top-level seed, the default stages
    assert runner.invoke(app, ["run", str(cfg)]).exit_code == 0
    assert plans[-1].seeds == [2] and plans[-1].seed_stages == set(pipeline.DEFAULT_SEED_STAGES)
    assert not (tmp_path / "w").exists() and not (tmp_path / "other").exists()


def test_a_stage_command_takes_its_config_table_and_the_command_line_wins(tmp_path, monkeypatch):
    """defaults < TOML (top level for the common options, [pretrain] for the stage) < command line, also when the
    command line names a value equal to the default."""
    from cldg.stages import pretrain

    seen = []
    monkeypatch.setattr(pretrain, "run", lambda cfg, common: seen.append((cfg, common)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'workdir = "{tmp_path / "w"}"\nseed = 9\n'
                   '[pretrain]\nhidden_size = 32\nlr = 0.002\nepochs = 3\nmodel = "hran"\n')
    result = runner.invoke(app, ["pretrain", "--config", str(cfg), "--lr", "0.005", "--epochs", "10", "--seed", "4"])
    assert result.exit_code == 0, result.output
    stage, common = seen[-1]
    assert (stage.hidden_size, stage.model) == (32, "hran")          # from the TOML
    assert (stage.lr, stage.epochs, common.seed) == (0.005, 10, 4)   # the command line over the TOML (10: the default)
    assert stage.batch_size == pretrain.Config().batch_size and common.workdir == tmp_path / "w"
    assert common.config == cfg
