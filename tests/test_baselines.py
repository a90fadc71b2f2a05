"""Issue 15: the generic approach stage and the paper's baselines (MMI-bidi, MMI-antiLM, CVAE) trained through it."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cldg.cli import app

runner = CliRunner()


# -- MMI-bidi reranking ------------------------------------------------------------------------------------

def test_mmi_reranking_order_matches_the_hand_computed_score():
    from cldg.decoding.rerank import mmi_scores, pick_best

    # three candidates: (log p(r|c), log p(c|r), |r|)
    fwd = torch.tensor([-2.0, -3.0, -4.5])
    bwd = torch.tensor([-9.0, -4.0, -2.0])
    length = torch.tensor([1.0, 3.0, 5.0])
    cands = [[[7]], [[8, 9, 10]], [[11, 12, 13, 14, 15]]]
    # by hand, lambda 0.5, gamma 0.2: -2 - 4.5 + 0.2 = -6.3; -3 - 2 + 0.6 = -4.4; -4.5 - 1 + 1.0 = -4.5
    scores = mmi_scores(fwd, bwd, length, 0.5, 0.2)
    assert scores.tolist() == pytest.approx([-6.3, -4.4, -4.5])
    assert pick_best([cands[0] + cands[1] + cands[2]], [scores]) == [[8, 9, 10]]
    # lambda 0, gamma 0 is the forward model's own choice; a large gamma prefers the longest
    assert pick_best([[c[0] for c in cands]], [mmi_scores(fwd, bwd, length, 0.0, 0.0)]) == [[7]]
    assert pick_best([[c[0] for c in cands]], [mmi_scores(fwd, bwd, length, 0.5, 2.0)]) == [[11, 12, 13, 14, 15]]
    assert pick_best([[]], [torch.empty(0)]) == [[]]


def test_mmi_tuning_picks_the_grid_point_whose_choices_match_the_references():
    from cldg.decoding.rerank import tune_weights

    # context 1: the forward favourite is wrong, the backward model prefers the right answer
    fwd = [torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])]
    bwd = [torch.tensor([-10.0, -1.0]), torch.tensor([-1.0, -5.0])]
    cands = [[["i", "do", "not", "know"], ["the", "red", "car", "is", "mine"]],
             [["good", "morning", "to", "you"], ["what"]]]
    refs = [["the", "red", "car", "is", "mine"], ["good", "morning", "to", "you"]]
    lam, gamma, grid = tune_weights(fwd, bwd, cands, refs, [0.0, 0.5], [0.0])
    assert (lam, gamma) == (0.5, 0.0)
    assert [g["lambda"] for g in grid] == [0.0, 0.5] and grid[1]["bleu"] > grid[0]["bleu"]
    # a tie keeps the first grid point
    assert tune_weights(fwd, bwd, cands, refs, [0.5, 1.0], [0.0])[:2] == (0.5, 0.0)


@pytest.fixture(scope="module")
def reference_workdir(tmp_path_factory, pretrain_tiny_reference):
    """A workdir of its own with a tiny MLE reference trained on the shared prepare artifact."""
    return pretrain_tiny_reference(tmp_path_factory.mktemp("baselines"))


MMI_ARGS = ["--batch-size", "16", "--epochs", "1", "--nbest", "3", "--tune-pairs", "6", "--lambdas", "0,0.5",
            "--gammas", "0,1", "--device", "cpu", "--seed", "1"]


def test_mmi_trains_through_the_generic_stage_then_evaluate_and_chat_take_it(reference_workdir):
    from cldg.artifacts import ArtifactStore
    from cldg.chat import chat_session
    from cldg.decoding.search import DecodeConfig
    from cldg.models import load_model

    work = reference_workdir
    result = runner.invoke(app, ["mmi-train", "--workdir", str(work), *MMI_ARGS])
    assert result.exit_code == 0, result.output
    art = ArtifactStore(work).latest("mmi")
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["approach"] == "mmi" and metrics["nbest"] == 3 and len(metrics["tuning_grid"]) == 4
    assert (metrics["lambda"], metrics["gamma"]) in {(g["lambda"], g["gamma"]) for g in metrics["tuning_grid"]}
    assert art.config["approach"] == "mmi" and set(art.manifest["inputs"]) == {"prepare", "reference"}
    model = load_model(art.path)
    assert (model.lam, model.gamma, model.nbest) == (metrics["lambda"], metrics["gamma"], 3)
    # the forward model is the reference, unchanged
    reference = load_model(ArtifactStore(work).latest("reference").path)
    assert all(torch.equal(a, b) for a, b in zip(model.forward_model.state_dict().values(),
                                                 reference.state_dict().values()))
    # same command again: the complete artifact is found by its fingerprint
    again = runner.invoke(app, ["mmi-train", "--workdir", str(work), *MMI_ARGS])
    assert again.exit_code == 0 and "found - skipped" in again.output

    result = runner.invoke(app, ["evaluate", "--workdir", str(work), "--model", "mmi", "--limit", "6",
                                 "--max-len", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ev = ArtifactStore(work).latest("eval")
    ev_metrics = json.loads(ev.file("metrics.json").read_text())
    # it reranks its 3-best list whatever --decoding says (greedy by default), and metrics.json says so
    assert ev_metrics["model"] == "mmi" and ev_metrics["decoding"] == "3-best MMI-bidi rerank"
    turns = iter(["hello there", ""])
    transcript = chat_session("mmi", work, None, DecodeConfig(max_len=6), "cpu", 0, read=lambda: next(turns))
    assert len(transcript) == 1 and transcript[0]["model"]


def test_mmi_reranking_picks_the_best_of_the_nbest_list_by_its_direct_scores(reference_workdir):
    """generate() on an mmi model = the N-best list's argmax of log p(r|c) + lambda log p(c|r) + gamma |r|, each
    log-prob computed here by teacher forcing on the two models directly."""
    from cldg.artifacts import ArtifactStore
    from cldg.data.batching import Limits, collate, collate_ids
    from cldg.decoding.rerank import nbest_lists
    from cldg.decoding.search import DecodeConfig, generate
    from cldg.models import load_model
    from cldg.text.tokenizer import PAD, DialogueTokenizer
    from cldg.training.losses import sequence_logprob

    from cldg.model_artifacts import model_limits, model_prepare

    result = runner.invoke(app, ["mmi-train", "--workdir", str(reference_workdir), *MMI_ARGS])
    assert result.exit_code == 0, result.output  # trained once: the test above may have made it
    art = ArtifactStore(reference_workdir).latest("mmi")
    model = load_model(art.path)
    model.lam, model.gamma = 0.7, 0.3
    tok = DialogueTokenizer.load(model_prepare(art).file("tokenizer.json"))
    limits: Limits = model_limits(art)
    contexts = [["hello there , how are you ?", "fine thanks"], ["what is your name ?"]]
    batch = collate(tok, contexts, None, limits)
    cfg = DecodeConfig(max_len=8)
    lists = nbest_lists(model, batch, cfg)
    expected = []
    for b, cands in enumerate(lists):
        ctx = [(batch.context[b][batch.context[b] != PAD].tolist(),
                [t[t != PAD].tolist() for t in batch.context_turns[b] if (t != PAD).any()])]
        best, best_score = None, None
        for cand in cands:
            pair = collate_ids(ctx, [cand], limits)
            f = sequence_logprob(model.forward_model(pair), pair.response_out, PAD)
            swapped = collate_ids([(cand, [cand])], [ctx[0][1][-1]], limits)
            r = sequence_logprob(model.backward_model(swapped), swapped.response_out, PAD)
            score = f.item() + 0.7 * r.item() + 0.3 * len(cand)
            if best_score is None or score > best_score + 1e-9:
                best, best_score = cand, score
        expected.append(best)
    assert generate(model, batch, cfg) == expected


def test_bad_mmi_options_are_one_line_and_exit_2(reference_workdir):
    result = runner.invoke(app, ["mmi-train", "--workdir", str(reference_workdir), "--lambdas", "a,b"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--lambdas 'a,b'" in lines[0]
    result = runner.invoke(app, ["mmi-train", "--workdir", str(reference_workdir), "--nbest", "0"])
    assert result.exit_code == 2 and "--nbest must be at least 1" in result.output


def test_the_generic_stage_needs_its_inputs_and_names_the_command_that_makes_them(tmp_path):
    result = runner.invoke(app, ["mmi-train", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "cldg pretrain" in result.output


# -- MMI-antiLM ----------------------------------------------------------------------------------------------

def test_antilm_reranking_order_matches_the_hand_computed_score():
    from cldg.decoding.rerank import antilm_scores, pick_best, prefix_logprobs

    # the language model's per-token log-probs of three candidates (0 past the end): the first is a generic
    # opening the LM finds likely, the others are rarer
    lm_tokens = torch.tensor([[-0.5, -0.5, -4.0, 0.0], [-3.0, -2.0, -1.0, -1.0], [-4.0, -4.0, 0.0, 0.0]])
    fwd = torch.tensor([-3.0, -4.0, -6.0])
    cands = [[7, 8, 9], [10, 11, 12, 13], [14, 15]]
    # log U_gamma, by hand, for gamma = 0, 1, 2 and 10 (past every end: the whole response)
    prefix = prefix_logprobs(lm_tokens, [0, 1, 2, 10])
    assert prefix.tolist() == [[0.0, -0.5, -1.0, -5.0], [0.0, -3.0, -5.0, -7.0], [0.0, -4.0, -8.0, -8.0]]
    # lambda 0.5, gamma 2: -3 + 0.5; -4 + 2.5; -6 + 4 -> the second
    scores = antilm_scores(fwd, prefix[:, 2], 0.5)
    assert scores.tolist() == pytest.approx([-2.5, -1.5, -2.0])
    assert pick_best([cands], [scores]) == [[10, 11, 12, 13]]
    # lambda 1, gamma 2: -2, 1, 2 -> the third; lambda 0 or gamma 0: the forward model's own choice
    assert pick_best([cands], [antilm_scores(fwd, prefix[:, 2], 1.0)]) == [[14, 15]]
    assert pick_best([cands], [antilm_scores(fwd, prefix[:, 2], 0.0)]) == [[7, 8, 9]]
    assert pick_best([cands], [antilm_scores(fwd, prefix[:, 0], 1.0)]) == [[7, 8, 9]]


def test_antilm_tuning_picks_the_lambda_and_threshold_whose_choices_match_the_references():
    from cldg.decoding.rerank import tune_antilm

    fwd = [torch.tensor([-1.0, -2.0])]
    # columns: gamma 0, gamma 1; the generic first candidate has the likelier opening
    lm = [torch.tensor([[0.0, -0.2], [0.0, -5.0]])]
    cands = [[["i", "do", "not", "know"], ["the", "red", "car", "is", "mine"]]]
    refs = [["the", "red", "car", "is", "mine"]]
    lam, gamma, grid = tune_antilm(fwd, lm, cands, refs, [0.0, 0.5], [0, 1])
    # only lambda 0.5 with gamma 1 moves the choice: -1 + 0.1 = -0.9 < -2 + 2.5 = 0.5
    assert (lam, gamma) == (0.5, 1)
    assert [(g["lambda"], g["gamma"]) for g in grid] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    assert grid[3]["bleu"] > grid[0]["bleu"] == grid[1]["bleu"] == grid[2]["bleu"]


ANTILM_ARGS = [*MMI_ARGS, "--objective", "antilm", "--thresholds", "1,3"]


def test_mmi_antilm_trains_a_response_lm_and_reranks_by_its_hand_computed_score(reference_workdir):
    """mmi-train --objective antilm: the language model is the reference's architecture trained on responses alone;
    generate() = the N-best list's argmax of log p(r|c) - lambda log p_LM(first gamma tokens), each computed here
    by teacher forcing directly; evaluate takes the model."""
    from cldg.artifacts import ArtifactStore
    from cldg.data.batching import collate, collate_ids
    from cldg.decoding.rerank import nbest_lists
    from cldg.decoding.search import DecodeConfig, generate
    from cldg.model_artifacts import model_limits, model_prepare
    from cldg.models import load_model
    from cldg.text.tokenizer import PAD, DialogueTokenizer
    from cldg.training.losses import sequence_logprob, token_logprobs

    work = reference_workdir
    result = runner.invoke(app, ["mmi-train", "--workdir", str(work), *ANTILM_ARGS])
    assert result.exit_code == 0, result.output
    art = ArtifactStore(work).latest("mmi")
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["objective"] == "antilm" and len(metrics["tuning_grid"]) == 4 and metrics["gamma"] in (1, 3)
    model = load_model(art.path)
    assert model.name == "mmi-antilm" and (model.lam, model.threshold) == (metrics["lambda"], metrics["gamma"])
    reference = load_model(ArtifactStore(work).latest("reference").path)
    assert all(torch.equal(a, b) for a, b in zip(model.forward_model.state_dict().values(),
                                                 reference.state_dict().values()))
    # the LM was trained (it is not the reference's copy)
    assert not all(torch.equal(a, b) for a, b in zip(model.lm_model.state_dict().values(),
                                                     reference.state_dict().values()))

    model.lam, model.threshold = 0.8, 2
    tok = DialogueTokenizer.load(model_prepare(art).file("tokenizer.json"))
    limits = model_limits(art)
    batch = collate(tok, [["hello there , how are you ?", "fine thanks"], ["what is your name ?"]], None, limits)
    cfg = DecodeConfig(max_len=8)
    expected = []
    for b, cands in enumerate(nbest_lists(model, batch, cfg)):
        ctx = (batch.context[b][batch.context[b] != PAD].tolist(),
               [t[t != PAD].tolist() for t in batch.context_turns[b] if (t != PAD).any()])
        scores = []
        for cand in cands:
            pair = collate_ids([ctx], [cand], limits)
            f = sequence_logprob(model.forward_model(pair), pair.response_out, PAD).item()
            alone = collate_ids([([], [])], [cand], limits)
            u = token_logprobs(model.lm_model(alone), alone.response_out, PAD)[0, :2].sum().item()
            scores.append(f - 0.8 * u)
        expected.append(cands[max(range(len(cands)), key=lambda i: (scores[i], -i))])
    assert generate(model, batch, cfg) == expected

    result = runner.invoke(app, ["evaluate", "--workdir", str(work), "--model", str(art.path), "--limit", "4",
                                 "--max-len", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_bad_antilm_thresholds_are_one_line_and_exit_2(reference_workdir):
    result = runner.invoke(app, ["mmi-train", "--workdir", str(reference_workdir), "--thresholds", "1,-2"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--thresholds '1,-2'" in lines[0]


# -- CVAE ----------------------------------------------------------------------------------------------------

def test_kl_annealing_rises_linearly_to_one_then_stays():
    from cldg.training.losses import kl_anneal_weight

    assert [kl_anneal_weight(s, 10000) for s in (0, 2500, 5000, 10000, 20000)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_anneal_weight(0, 0) == 1.0


def test_bag_of_words_loss_and_gaussian_kl_equal_direct_computations():
    import math

    from cldg.training.losses import bag_of_words_loss, gaussian_kl

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[3, 1, 3], [2, 0, 0]])  # 0 = PAD
    logz = math.log(sum(math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)))
    direct = [-((3 - logz) + (1 - logz) + (3 - logz)), math.log(4)]
    assert bag_of_words_loss(logits, targets, 0).tolist() == pytest.approx(direct)
    # KL of N(1, e^0.5) from N(0, 1) per dimension: (e^0.5 + 1 - 1 - 0.5) / 2
    mu_q, lv_q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    kl = gaussian_kl(mu_q, lv_q, torch.zeros(1, 2), torch.zeros(1, 2))
    assert kl.tolist() == pytest.approx([(math.exp(0.5) + 1 - 1 - 0.5) / 2])
    assert gaussian_kl(mu_q, lv_q, mu_q, lv_q).tolist() == pytest.approx([0.0])


CVAE_ARGS = ["--embedding-dim", "16", "--utterance-size", "8", "--context-size", "16", "--decoder-size", "16",
             "--latent-size", "4", "--batch-size", "16", "--epochs", "1", "--full-kl-step", "10", "--device", "cpu",
             "--seed", "1"]


def test_cvae_trains_resumes_and_evaluates_with_samples_from_the_prior(tmp_path, prepared_workdir, monkeypatch):
    from cldg.artifacts import ArtifactStore
    from cldg.training.recipes.cvae import CVAERecipe

    _, prepared = prepared_workdir
    args = ["cvae-train", "--workdir", str(tmp_path), "--prepare-dir", str(prepared.path), *CVAE_ARGS]
    loss = CVAERecipe.loss

    def ctrl_c_at_step_4(self, model, batch, step):
        if step == 3:
            raise KeyboardInterrupt
        return loss(self, model, batch, step)

    monkeypatch.setattr(CVAERecipe, "loss", ctrl_c_at_step_4)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code != 0
    saved = json.loads(next((tmp_path / "cvae").glob("*.partial/resume/last.json")).read_text())
    assert saved["step"] == 3
    monkeypatch.setattr(CVAERecipe, "loss", loss)
    full = runner.invoke(app, args)  # the same command resumes at step 4
    assert full.exit_code == 0, full.output
    art = ArtifactStore(tmp_path).latest("cvae")
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["approach"] == "cvae" and metrics["steps"] > 3
    log = [json.loads(line) for line in art.file("train-log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["type"] == "train"]
    assert [r["step"] for r in train][:2] == [1, 20] or [r["step"] for r in train] == [1]  # step 1 logged once
    assert train[0]["kl_weight"] == 0.0 and all(r["kl"] >= 0 and r["bow"] > 0 for r in train)

    ev = ["evaluate", "--workdir", str(tmp_path), "--model", "cvae", "--limit", "6", "--max-len", "8", "--device", "cpu"]
    result = runner.invoke(app, ev)
    assert result.exit_code == 0, result.output
    gens = [json.loads(line) for line in ArtifactStore(tmp_path).latest("eval").file("generations.jsonl").read_text()
            .splitlines()]
    assert len(gens) == 6
    # z is drawn from the prior: another seed gives other responses, the same seed the same ones
    again = runner.invoke(app, [*ev, "--seed", "2"])
    assert again.exit_code == 0, again.output
    other = [json.loads(line)["generated"] for line in
             ArtifactStore(tmp_path).latest("eval").file("generations.jsonl").read_text().splitlines()]
    assert other != [g["generated"] for g in gens]
    # each context draws its z from its own row seed: --batch-size (not in the fingerprint) changes no response
    small = runner.invoke(app, [*ev, "--batch-size", "2", "--force"])
    assert small.exit_code == 0, small.output
    batched = [json.loads(line)["generated"] for line in
               ArtifactStore(tmp_path).latest("eval").file("generations.jsonl").read_text().splitlines()]
    assert batched == [g["generated"] for g in gens]


def test_bad_cvae_options_are_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["cvae-train", "--workdir", str(tmp_path), "--latent-size", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--latent-size must be at least 1" in lines[0]


# -- examples/chitchat-baselines.toml ------------------------------------------------------------------------

def test_the_baselines_config_parses_shares_the_demo_and_compares_every_approach_against_contrastive():
    """Every table and option checks (load_plan reads the whole file as `cldg run` does), each baseline table is a
    registered approach's, the demo's stages are configured exactly as in the demo (same workdir and fingerprints,
    so its artifacts are reused), and the comparison's first run is the contrastive model."""
    from pathlib import Path

    from cldg.approaches import approaches
    from cldg.config import load_toml
    from cldg.pipeline import load_plan

    root = Path(__file__).resolve().parent.parent / "examples"
    plan, demo = load_plan(root / "chitchat-baselines.toml"), load_plan(root / "chitchat-demo.toml")
    assert (plan.common.workdir, plan.common.seed) == (demo.common.workdir, demo.common.seed)
    # the same artifacts, but its own reports: the demo's compare/ and seeds/ are not replaced
    assert demo.reports == demo.common.workdir and plan.reports == demo.common.workdir / "baselines"
    assert plan.parallel == demo.parallel  # the stages' thread counts, and so their floats, are the demo's
    demo_cfgs = {s.label: s.cfg for s in demo.steps}
    for step in plan.steps:
        if step.label in demo_cfgs:
            assert step.cfg == demo_cfgs[step.label], step.label
    assert set(demo_cfgs) <= {s.label for s in plan.steps}

    by_table = {f"{a.name}_train": a for a in approaches() if a.generic}
    doc = load_toml(root / "chitchat-baselines.toml")
    trained = [by_table[t].makes for t in doc if t.endswith("_train") and t in by_table]
    assert {"mmi", "cvae", "dialogwae", "deeprl", "adversarial"} <= set(trained)
    unknown = [t for t in doc if t.endswith("_train") and t not in by_table and t not in ("contrastive_train",)]
    assert not unknown
    evaluated = [s.cfg.model for s in plan.steps if s.table == "evaluate"]
    assert evaluated[0] == "contrastive" and sorted(evaluated[1:]) == sorted(["reference", *trained])
