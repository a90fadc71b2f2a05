"""Reproducible runs, evidence across seeds and the ablation table.

One `cldg run --seeds 3,4` in a fresh process (another Python hash seed than pytest's) on the tiny
corpus: its seed-3 metrics must equal, byte for byte, those of the `tiny_pipeline` fixture (seed 3, this
process); the data stages are built once for both seeds; the summary across seeds is written. Then
`cldg ablate` on the same workdir reuses everything but the ablated trainings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cldg.cli import app

runner = CliRunner()


def eval_metrics(workdir: Path) -> dict[str, bytes]:
    """model stage -> metrics.json bytes of every evaluate artifact, keyed by (model, seed)."""
    out = {}
    for d in sorted((workdir / "eval").iterdir()):
        if (d / "manifest.json").is_file():
            manifest = json.loads((d / "manifest.json").read_text())
            key = (json.loads((d / "metrics.json").read_text())["model"], manifest["config"]["seed"])
            out[key] = (d / "metrics.json").read_bytes()
    return out


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, tiny_pipeline):
    _, config, _ = tiny_pipeline
    work = tmp_path_factory.mktemp("seeds") / "work"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cldg.cli", "run", str(config), "--workdir", str(work),
                           "--seeds", "3,4"], capture_output=True, text=True, env=env, timeout=900)
    return work, config, proc


def test_same_seed_in_another_process_gives_identical_metrics(tiny_pipeline, seeds_run):
    first, _, result = tiny_pipeline
    second, _, proc = seeds_run
    assert result.exit_code == 0 and proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = eval_metrics(first), eval_metrics(second)
    for model in ("reference", "contrastive"):
        assert a[(model, 3)] == b[(model, 3)], f"{model}: metrics.json differs between two runs of seed 3"
    # and the seed matters: seed 4 trained other models
    assert b[("contrastive", 4)] != b[("contrastive", 3)]


def test_seeds_reuse_the_data_stages_and_write_a_summary(seeds_run):
    work, _, proc = seeds_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((work / "run-summary.json").read_text())
    assert summary["seeds"] == [3, 4]
    stages = [s["stage"] for s in summary["steps"]]
    for data_stage in ("prepare", "index", "train-matcher", "mine-samples"):
        assert stages.count(data_stage) == 1, stages
    assert stages.count("pretrain [seed 3]") == 1 and stages.count("pretrain [seed 4]") == 1
    # one reference, one contrastive model and two evaluations per seed
    for stage, n in (("reference", 2), ("contrastive", 2), ("eval", 4), ("samples", 1), ("matcher", 1)):
        built = [d for d in (work / stage).iterdir() if (d / "manifest.json").is_file() and not d.is_symlink()]
        assert len(built) == n, (stage, built)
    # each seed's contrastive model was trained from that seed's reference
    for step in summary["steps"]:
        if step["stage"].startswith("contrastive-train"):
            manifest = json.loads((Path(step["artifact"]) / "manifest.json").read_text())
            ref = json.loads((Path(manifest["inputs"]["reference"]["path"]) / "manifest.json").read_text())
            assert ref["config"]["seed"] == step["seed"]
    seeds = json.loads((work / "seeds" / "summary.json").read_text())
    assert seeds["seeds"] == [3, 4]
    assert seeds["models"] == ["reference (greedy)", "contrastive (greedy)"]
    dist2 = seeds["differences"][0]["metrics"]["dist2"]
    assert len(dist2["per_seed"]) == 2 and 0 <= dist2["seeds_better"] <= 2
    ref = seeds["per_model"]["reference (greedy)"]["bleu1"]
    assert ref["mean"] == pytest.approx(sum(ref["values"]) / 2)
    assert (work / "seeds" / "summary.png").stat().st_size > 1000
    assert "± " in (work / "seeds" / "summary.md").read_text()
    replies = seeds["differences"][0]["metrics"]["distinct_replies"]  # counted, beside Dist, per seed
    assert len(replies["per_seed"]) == 2 and "| distinct replies |" in (work / "seeds" / "summary.md").read_text()
    matched = seeds["differences"][0]["metrics"]["dist1_matched"]  # Dist at one length, per seed
    assert len(matched["per_seed"]) == 2 and "| Dist-1, length-matched |" in (work / "seeds" / "summary.md").read_text()
    assert (work / "compare" / "seed-4" / "comparison.json").is_file()


def test_ablate_trains_each_variant_from_the_same_reference_and_samples(seeds_run):
    work, config, _ = seeds_run
    result = runner.invoke(app, ["ablate", str(config), "--workdir", str(work), "--ks", "1,2"])
    assert result.exit_code == 0, result.output
    table = json.loads((work / "ablation" / "ablation.json").read_text())
    assert list(table["rows"]) == ["MLE reference", "full (k = 2)", "no group", "no positive group",
                                   "no negative group", "context side only", "response side only",
                                   "no matching scores", "k = 1"]
    assert table["k"] == [1, 2]
    assert table["seconds"] > 0  # the study's wall time is saved with it
    inputs = set()
    for label, per_seed in table["runs"].items():
        evaluated = json.loads((Path(per_seed["3"]) / "manifest.json").read_text())
        model = json.loads((Path(evaluated["inputs"]["model"]["path"]) / "manifest.json").read_text())
        inputs.add((model["inputs"]["reference"]["fingerprint"], model["inputs"]["samples"]["fingerprint"]))
    assert len(inputs) == 1, "every variant must share the reference and the samples"
    models = {json.loads((Path(p["3"]) / "metrics.json").read_text())["model_fingerprint"]
              for p in table["runs"].values()}
    assert len(models) == len(table["runs"]), "each variant is its own trained model"
    md = (work / "ablation" / "ablation.md").read_text()
    assert "| no matching scores |" in md and "| k = 1 |" in md
    for label, per_seed in table["runs"].items():  # the counts come from each run's own generations
        gens = (Path(per_seed["3"]) / "generations.jsonl").read_text().splitlines()
        replies = {tuple(json.loads(line)["generated_tokens"]) for line in gens}
        assert table["rows"][label]["distinct_replies"]["mean"] == len(replies)
    # each row's Dist at one length against the reference, recomputed from both models' generations
    from cldg.metrics.diversity import distinct_n

    def tokens(run_dir):
        return [json.loads(line)["generated_tokens"]
                for line in (Path(run_dir) / "generations.jsonl").read_text().splitlines()]

    matched = table["length_matched_vs_reference"]
    assert set(matched) == set(table["runs"])
    reference, ours = tokens(table["reference_runs"]["3"]), tokens(table["runs"]["no group"]["3"])
    cut = [(a[:min(len(a), len(b))], b[:min(len(a), len(b))]) for a, b in zip(ours, reference)]
    expected = distinct_n([a for a, _ in cut], 2) - distinct_n([b for _, b in cut], 2)
    assert matched["no group"]["dist2_matched_vs_reference"]["mean"] == pytest.approx(expected)
    assert "Dist-2 vs ref, length-matched" in md
    assert (work / "ablation" / "ablation-k.png").stat().st_size > 1000


def test_bad_seeds_option_is_one_line(tiny_pipeline):
    _, config, _ = tiny_pipeline
    result = runner.invoke(app, ["run", str(config), "--seeds", "13,x"])
    assert result.exit_code == 2 and "--seeds '13,x'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["run", str(config), "--seeds", "13,13"])
    assert result.exit_code == 2 and "repeats" in result.output


def test_configure_runtime_fixes_threads_and_deterministic_algorithms(monkeypatch):
    import torch

    from cldg.runtime import configure_runtime

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    try:
        assert configure_runtime(True, 1) == 1
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        # deterministic results without the mode's NaN-filling of new tensors (its measured cost)
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_runtime(False, 0) == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def test_prepare_trains_fasttext_with_one_worker_when_deterministic(monkeypatch, tiny_dialogues_path, tmp_path):
    import cldg.stages.prepare as prepare
    import cldg.text.vectors as vectors
    from cldg.config import CommonOptions

    seen = []
    real = vectors.train_fasttext

    def spy(sentences, dim, epochs, seed, workers, **kw):
        seen.append(workers)
        return real(sentences, dim, epochs, seed, workers, **kw)

    monkeypatch.setattr(vectors, "train_fasttext", spy)
    cfg = prepare.Config(input=tiny_dialogues_path, vector_dim=8, vector_epochs=1, workers=2)
    prepare.run(cfg, CommonOptions(workdir=tmp_path / "a", deterministic=True))
    prepare.run(cfg, CommonOptions(workdir=tmp_path / "b", deterministic=False))
    assert seen == [1, 2]


def test_ablation_rows_need_the_references_pairs_for_dist_at_one_length():
    from types import SimpleNamespace

    from cldg.errors import CldgError
    from cldg.reports import _matched_dist_against

    def run(pair_ids, replies, path):
        return SimpleNamespace(generations=[{"pair_id": p} for p in pair_ids], words=lambda: replies,
                               art=SimpleNamespace(path=Path(path)))

    reference = run([1, 2], [["i", "know"], ["yes"]], "eval/ref")
    # the row answers longer; cut to the reference's length it has 3 distinct words of 3 against 3 of 3
    longer = run([1, 2], [["you", "do", "not", "know"], ["no", "way"]], "eval/row")
    got = _matched_dist_against({3: longer}, {3: reference}, "row")
    assert got["dist1_matched_vs_reference"] == [pytest.approx(0.0)]
    repeats = run([1, 2], [["yes", "yes", "yes"], ["yes"]], "eval/row")
    assert _matched_dist_against({3: repeats}, {3: reference}, "row")["dist1_matched_vs_reference"][0] \
        == pytest.approx(1 / 3 - 1)
    with pytest.raises(CldgError, match="eval/row: evaluated on other pairs than eval/ref"):
        _matched_dist_against({3: run([2, 1], [["a"], ["b"]], "eval/row")}, {3: reference}, "row")
    with pytest.raises(CldgError, match="seed 4"):
        _matched_dist_against({4: longer}, {3: reference}, "row")
