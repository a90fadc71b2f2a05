"""End to end: `cldg run` on a tiny corpus builds every artifact, prints the final table, and a rerun
skips every stage."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from cldg.artifacts import ArtifactStore
from cldg.cli import app

runner = CliRunner()
STAGES = ("prepare", "index", "matcher", "samples", "reference", "refcache", "contrastive", "eval")


def test_run_builds_every_artifact(tiny_pipeline):
    workdir, _, result = tiny_pipeline
    assert result.exit_code == 0, result.output
    store = ArtifactStore(workdir)
    for stage in STAGES:
        art = store.latest(stage)
        assert art is not None, f"no complete {stage} artifact"
        for name, info in art.manifest["files"].items():
            assert (art.path / name).stat().st_size == info["bytes"]
    evals = [d for d in (workdir / "eval").iterdir() if (d / "manifest.json").exists()]
    assert {json.loads((d / "metrics.json").read_text())["model"] for d in evals} == {"reference", "contrastive"}
    summary = json.loads((workdir / "run-summary.json").read_text())
    assert [s["stage"] for s in summary["steps"]] == ["prepare", "index", "train-matcher", "mine-samples", "pretrain",
                                                      "contrastive-train", "evaluate (reference)",
                                                      "evaluate (contrastive)"]
    # the final MLE-vs-contrastive table
    assert "Dist-1" in result.output and "contrastive (greedy)" in result.output and "reference (greedy)" in result.output
    cmp = json.loads((workdir / "compare" / "comparison.json").read_text())
    assert [r["name"] for r in cmp["runs"]] == ["reference (greedy)", "contrastive (greedy)"]
    assert (workdir / "compare" / "comparison.png").stat().st_size > 1000


def test_rerun_skips_every_stage(tiny_pipeline):
    workdir, config, _ = tiny_pipeline
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "run-summary.json").read_text())
    assert all(s["skipped"] for s in summary["steps"]), summary


def test_a_variant_config_keeps_its_reports_apart_and_is_warned_before_replacing_others(tiny_pipeline):
    workdir, config, _ = tiny_pipeline
    before = {name: (workdir / name).read_bytes() for name in ("run-summary.json", "compare/comparison.json")}
    variant = config.with_name("variant.toml")
    variant.write_text(config.read_text() + '\n[run]\nreports = "variant"\n')
    result = runner.invoke(app, ["run", str(variant)])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "variant" / "run-summary.json").read_text())
    assert summary["config"] == str(variant) and all(s["skipped"] for s in summary["steps"])  # same artifacts
    assert (workdir / "variant" / "compare" / "comparison.json").is_file()
    # the reports already in the workdir are the other config's, untouched
    assert {name: (workdir / name).read_bytes() for name in before} == before
    # a second config aimed at the same reports folder is told, before any stage, whose reports it replaces
    other = config.with_name("other.toml")
    other.write_text(variant.read_text())
    result = runner.invoke(app, ["run", str(other)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert f"holds the reports of {variant}" in flat
    assert flat.index("holds the reports of") < flat.index("prepare")
    # rerunning the same config gives no such warning
    again = runner.invoke(app, ["run", str(other)])
    assert again.exit_code == 0 and "holds the reports of" not in again.output
    bad = config.with_name("bad-reports.toml")
    bad.write_text(config.read_text() + "\n[run]\nreports = 3\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "[run] reports" in result.output and "Traceback" not in result.output


def test_status_lists_the_artifacts(tiny_pipeline):
    workdir, _, _ = tiny_pipeline
    result = runner.invoke(app, ["status", str(workdir), "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["stage"] for r in rows if r["state"] == "complete"} >= set(STAGES)


def test_missing_input_artifact_names_the_command(tmp_path):
    result = runner.invoke(app, ["pretrain", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no 'prepare' artifact" in result.output and "cldg prepare" in result.output


def test_chat_answers_with_the_model_and_the_reference_beside_it(tiny_pipeline):
    from cldg.chat import chat_session
    from cldg.decoding.search import DecodeConfig

    workdir, _, _ = tiny_pipeline
    turns = iter(["do you like pizza ?", "what about sushi ?", "/quit"])
    transcript = chat_session("contrastive", workdir, "reference", DecodeConfig("greedy", max_len=8), "cpu", 0,
                              read=lambda: next(turns))
    assert [t["user"] for t in transcript] == ["do you like pizza ?", "what about sushi ?"]
    assert all(t["model"] and t["reference (MLE)"] for t in transcript)


def test_chat_cli_reads_turns_until_an_empty_line(tiny_pipeline):
    workdir, _, _ = tiny_pipeline
    result = runner.invoke(app, ["chat", "contrastive", "--workdir", str(workdir), "--decoding", "greedy",
                                 "--device", "cpu"], input="hello there !\n\n")
    assert result.exit_code == 0, result.output
    assert "model:" in result.output
    bad = runner.invoke(app, ["chat", "contrastive", "--workdir", str(workdir), "--decoding", "sideways"])
    assert bad.exit_code == 2 and "--decoding 'sideways'" in bad.output


def test_run_writes_blind_sheets_of_the_first_model_against_each_other(tiny_pipeline, tmp_path):
    import csv

    workdir, config, _ = tiny_pipeline
    with_sheets = tmp_path / "sheets.toml"
    with_sheets.write_text(config.read_text() + "\n[run]\nhuman_eval = 5\n")
    result = runner.invoke(app, ["run", str(with_sheets)])
    assert result.exit_code == 0, result.output
    sheet_dir = workdir / "human-eval" / "reference-vs-contrastive"
    rows = list(csv.DictReader(open(sheet_dir / "sheet.csv", encoding="utf-8")))
    key = json.loads((sheet_dir / "key.json").read_text())
    assert len(rows) == 5 and set(key["items"]) == {r["item"] for r in rows}
    assert key["system_a"].endswith(tuple(str(d.name) for d in (workdir / "eval").iterdir()))
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text() + "\n[run]\nhuman_eval = -1\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "human_eval" in result.output and "Traceback" not in result.output
