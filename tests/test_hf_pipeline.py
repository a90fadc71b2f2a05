"""`--model hf:PATH` through the pipeline, on a tiny random GPT-2 and a tiny BART that examples/make_tiny_hf_model.py
builds from the fixture corpus's prepared text (offline): pretrain (MLE fine-tuning) -> contrastive-train (the
refcache holds the reference's own log-probs, keyed by its tokenization) -> evaluate and chat; DPO with LoRA from
the hf reference; a missing directory is one line naming it, exit 2."""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from test_hf_approaches import mined_workdir, setup_recipe  # noqa: E402,F401  (the fixture: reference + samples)
from typer.testing import CliRunner  # noqa: E402

from cldg.cli import app  # noqa: E402

runner = CliRunner()
CPU = ["--device", "cpu", "--seed", "1"]


def make_tiny(prepare_dir: Path, out: Path, arch: str) -> Path:
    """The example script's model: a random 16-d, 1-layer `arch` with a BPE tokenizer trained on the pairs."""
    script = Path(__file__).parents[1] / "examples" / "make_tiny_hf_model.py"
    spec = importlib.util.spec_from_file_location("make_tiny_hf_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--prepare-dir", str(prepare_dir), "--out", str(out), "--arch", arch, "--vocab-size", "400",
                        "--dim", "16", "--layers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_gpt2(prepared_workdir, tmp_path_factory) -> Path:
    return make_tiny(prepared_workdir[1].path, tmp_path_factory.mktemp("hf") / "gpt2", "gpt2")


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_pretrain_contrastive_evaluate_and_chat_on_an_hf_model(mined_workdir, tmp_path, prepared_workdir, tiny_gpt2,
                                                                arch):
    from cldg.artifacts import ArtifactStore
    from cldg.chat import chat_session
    from cldg.decoding.search import DecodeConfig
    from cldg.models import load_model
    from cldg.models.hf import HFDialogueModel
    from cldg.training.groups import GroupOptions, build_groups
    from cldg.retrieval.mining import read_samples
    from cldg.data.pairs import read_pairs
    from cldg.training.reference_cache import load_reference_cache

    work, (_, prepared) = mined_workdir, prepared_workdir
    model_dir = tiny_gpt2 if arch == "gpt2" else make_tiny(prepared.path, tmp_path / arch, arch)
    store = ArtifactStore(work)
    invoke("pretrain", "--workdir", work, "--prepare-dir", prepared.path, "--model", f"hf:{model_dir}", "--max-steps", 6, "--batch-size", 16,
           "--lr", "3e-3", "--max-valid-pairs", 16, "--max-response-tokens", 24, *CPU)
    reference_art = store.latest("reference")
    reference = load_model(reference_art.path)
    assert isinstance(reference, HFDialogueModel) and reference.max_response_tokens == 24
    assert json.loads(reference_art.file("metrics.json").read_text())["model"] == f"hf:{model_dir}"
    # the fine-tuned weights were saved, not the random ones
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if arch == "bart" else AutoModelForCausalLM
    original = auto.from_pretrained(model_dir, local_files_only=True).state_dict()
    assert any(not torch.equal(v, original[k]) for k, v in reference.hf.state_dict().items() if k in original)

    invoke("contrastive-train", "--workdir", work, "--reference-dir", reference_art.path, "--k", 2, "--batch-size",
           4, "--max-steps", 2, "--max-valid-groups", 4, *CPU)
    target_art = store.latest("contrastive")
    assert isinstance(load_model(target_art.path), HFDialogueModel)
    # the refcache holds the hf reference's own log p(r|c) of the mined sequences, keyed by its tokenization
    cache = Artifact_for(store, reference_art)
    assert cache.config["limits"]["tokenizer_sha256"] and cache.config["limits"]["max_response_tokens"] == 24
    cached = load_reference_cache(cache)
    samples = read_samples(store.latest("samples").path)
    seqs = sorted(build_groups(samples, "valid", GroupOptions(2)).sequences())[:6]
    text = {}
    for split in ("train", "valid"):
        t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
        text.update({pid: (list(c)[-3:], r) for pid, c, r in zip(t.pair_id, t.context, t.response)})
    direct = reference.score([text[c][0] for c, _ in seqs], [text[r][1] for _, r in seqs])
    assert [cached[s] for s in seqs] == pytest.approx(direct, abs=1e-4)

    result = invoke("evaluate", "--workdir", work, "--model", "contrastive", "--limit", 6, "--max-len", 6,
                    "--decoding", "beam", "--beam-size", 2, "--device", "cpu")
    metrics = json.loads(store.latest("eval").file("metrics.json").read_text())
    assert metrics["model"] == "contrastive" and metrics["responses"] == 6 and metrics["reference_ppl"] > 1
    turns = iter(["hello there", ""])
    transcript = chat_session("contrastive", work, f"hf:{model_dir}", DecodeConfig(max_len=5), "cpu", 0,
                              read=lambda: next(turns))
    assert len(transcript) == 1 and transcript[0]["model"] and transcript[0]["reference (MLE)"]


def Artifact_for(store, reference_art):
    """The refcache artifact made from this reference."""
    found = [a for a in (store.root / "refcache").iterdir() if (a / "manifest.json").is_file()]
    from cldg.artifacts import Artifact

    caches = [Artifact.load(a) for a in found]
    return next(c for c in caches if c.manifest["inputs"]["reference"]["fingerprint"] == reference_art.fingerprint)


def test_dpo_with_lora_from_an_hf_reference_and_a_bare_directory_evaluated(mined_workdir, prepared_workdir,
                                                                           tiny_gpt2):
    from cldg.artifacts import ArtifactStore
    from cldg.models import load_model

    work, (_, prepared) = mined_workdir, prepared_workdir
    model_dir = tiny_gpt2
    store = ArtifactStore(work)
    invoke("pretrain", "--workdir", work, "--prepare-dir", prepared.path, "--model", f"hf:{model_dir}", "--max-steps", 2, "--batch-size", 16,
           "--max-valid-pairs", 8, *CPU)
    reference_art = store.latest("reference")
    # before a step the target is the reference: DPO's valid loss is log 2 (the hf: scorer's batches of chosen and
    # rejected score as the reference pass did, one sequence at a time)
    model, recipe = setup_recipe(work, "dpo", max_valid_pairs=6, beta=2.0)
    with torch.no_grad():
        assert recipe.validate(model.eval())["criterion"] == pytest.approx(math.log(2), abs=1e-5)
    invoke("dpo-train", "--workdir", work, "--reference-dir", reference_art.path, "--lora-r", 2, "--lr", "1e-2",
           "--max-steps", 2, "--batch-size", 4, "--max-valid-pairs", 4, *CPU)
    dpo = load_model(store.latest("dpo").path)
    reference = load_model(reference_art.path)
    # the adapters were merged into the saved weights: a plain transformers model, and it moved
    assert dpo.lora is None and not any("lora" in k for k in dpo.hf.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(dpo.hf.state_dict().values(), reference.hf.state_dict().values()))
    # the token-level objectives on the hf model: SimCTG's states, sequence-level unlikelihood's own responses
    for args in (["simctg-train"], ["unlikelihood-train", "--sequence-level-rate", 1, "--ngram", 1]):
        invoke(*args, "--workdir", work, "--reference-dir", reference_art.path, "--max-steps", 1, "--batch-size", 4,
               "--max-valid-pairs", 4, *CPU)
        name = args[0].removesuffix("-train")
        assert json.loads(store.latest(name).file("metrics.json").read_text())["steps"] == 1
    # the group-wise loss with LoRA: the adapters train, the refcache stays the reference's
    invoke("contrastive-train", "--workdir", work, "--reference-dir", reference_art.path, "--lora-r", 2, "--k", 2,
           "--lr", "1e-2", "--batch-size", 4, "--max-steps", 2, "--max-valid-groups", 4, *CPU)
    target_art = store.latest("contrastive")
    assert target_art.config["lora_r"] == 2 and target_art.manifest["inputs"]["reference"]["fingerprint"] == \
        reference_art.fingerprint
    target = load_model(target_art.path)
    assert any(not torch.equal(a, b) for a, b in zip(target.hf.state_dict().values(),
                                                     reference.hf.state_dict().values()))
    # a pretrained directory evaluated as it is, on the latest prepare artifact's test pairs
    # (with SimCTG's decoding, contrastive search: alpha 0 is greedy, so set one)
    invoke("evaluate", "--workdir", work, "--prepare-dir", prepared.path, "--model", f"hf:{model_dir}", "--limit", 4,
           "--max-len", 5, "--contrastive-alpha", "0.6", "--top-k", 3, "--device", "cpu")
    metrics = json.loads(store.latest("eval").file("metrics.json").read_text())
    assert metrics["model"] == f"hf:{model_dir}" and metrics["decoding"] == "contrastive search (alpha 0.6, k 3)"


def test_lora_and_contrastive_search_on_a_cldg_model_are_one_line(mined_workdir):
    from cldg.artifacts import ArtifactStore

    native = [a for a in (ArtifactStore(mined_workdir).root / "reference").iterdir()
              if (a / "model.json").is_file() and '"hf"' not in (a / "model.json").read_text()][0]
    result = runner.invoke(app, ["contrastive-train", "--workdir", str(mined_workdir), "--reference-dir", str(native),
                                 "--lora-r", "2", "--k", "2", "--max-steps", "1", "--device", "cpu"])
    assert result.exit_code == 2 and "--lora-r 2: LoRA is for hf: references" in result.output, result.output
    result = runner.invoke(app, ["evaluate", "--workdir", str(mined_workdir), "--model", str(native),
                                 "--contrastive-alpha", "0.6", "--limit", "2", "--device", "cpu"])
    assert result.exit_code == 2 and "contrastive search is for hf: models" in result.output, result.output


@pytest.mark.parametrize("option", ["--no-repeat-ngram", "--block-context-ngram"])
def test_contrastive_search_refuses_the_ngram_blocking_it_does_not_apply(mined_workdir, tmp_path, option):
    """metrics.json's decode_config would record a blocking that contrastive search never applied: one line."""
    result = runner.invoke(app, ["evaluate", "--workdir", str(mined_workdir), "--model", f"hf:{tmp_path}",
                                 "--contrastive-alpha", "0.6", option, "3", "--limit", "2", "--device", "cpu"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{option} and" in result.output or f"and {option}" in result.output
    assert "not applied by contrastive search" in result.output


@pytest.mark.parametrize("command", [["pretrain"], ["evaluate"], ["chat"]])
def test_a_missing_hf_directory_is_one_line_naming_it(tmp_path, command):
    missing = tmp_path / "no-such-model"
    args = [*command, "--workdir", str(tmp_path)]
    args += [f"hf:{missing}"] if command == ["chat"] else ["--model", f"hf:{missing}"]
    result = runner.invoke(app, args, input="hello\n\n")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in result.output


def test_the_example_comparison_config_plans_every_objective_on_the_hf_model(tmp_path):
    from cldg.pipeline import load_plan

    config = Path(__file__).parents[1] / "examples" / "hf-tiny-gpt2.toml"
    with pytest.raises(Exception, match="tiny-gpt2: no such directory"):  # made by the documented command
        load_plan(config, workdir=tmp_path)
    plan = load_plan(config, workdir=tmp_path, table_overrides={"pretrain": {"model": f"hf:{tmp_path}"}})
    labels = [step.label for step in plan.steps]
    for name in ("unlikelihood", "ct", "simctg", "dpo", "bco"):
        assert f"{name}-train" in labels and f"evaluate ({name})" in labels
    assert "evaluate (reference)" in labels and "evaluate (contrastive)" in labels and "kto-train" not in labels
    betas = {step.table: step.cfg.beta for step in plan.steps if hasattr(step.cfg, "beta")}
    assert betas == {"contrastive_train": 1.0, "dpo_train": 1.0, "bco_train": 1.0}


def test_an_interrupted_hf_pretrain_resumes_to_the_same_weights(prepared_workdir, tiny_gpt2, tmp_path):
    """The trainer's checkpoints hold GPT-2's tied embedding and output weights (as copies: safetensors refuses
    shared memory), and a run stopped by Ctrl-C at step 3 resumes to the uninterrupted run's weights."""
    from cldg.config import CommonOptions
    from cldg.models import load_model
    from cldg.stages import pretrain
    from cldg.training.recipes.pairs import PairsRecipe

    cfg = pretrain.Config(model=f"hf:{tiny_gpt2}", prepare_dir=prepared_workdir[1].path, max_steps=5, batch_size=8,
                          max_valid_pairs=8)
    straight = pretrain.run(cfg, CommonOptions(workdir=tmp_path / "a", seed=3, device="cpu"))
    loss = PairsRecipe.loss

    def ctrl_c_at_step_3(self, model, batch, step):
        if step == 3:
            raise KeyboardInterrupt
        return loss(self, model, batch, step)

    PairsRecipe.loss = ctrl_c_at_step_3
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain.run(cfg, CommonOptions(workdir=tmp_path / "b", seed=3, device="cpu"))
    finally:
        PairsRecipe.loss = loss
    resumed = pretrain.run(cfg, CommonOptions(workdir=tmp_path / "b", seed=3, device="cpu"))
    a, b = load_model(straight.path).hf.state_dict(), load_model(resumed.path).hf.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
