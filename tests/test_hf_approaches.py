"""The objectives of issue 16 as approaches (cldg <name>-train through the generic stage) on a cldg model: each
trains from the MLE reference and evaluates; before the first step the target is the reference, so DPO's valid loss
is log 2, BCO pair's 2 log 2 and KTO's 1/2 exactly (the cached reference log-probs match the model's); SimCTG's
states are the input of the model's output layer; bad options are one line, exit 2."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from cldg.cli import app

runner = CliRunner()
FAST = ["--max-steps", "2", "--batch-size", "8", "--max-valid-pairs", "16", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def mined_workdir(tmp_path_factory, prepared_workdir):
    """A workdir with a tiny seq2seq reference and BM25-mined samples on the shared prepare artifact."""
    _, prepared = prepared_workdir
    work = tmp_path_factory.mktemp("objectives")
    common = ["--workdir", str(work), "--prepare-dir", str(prepared.path), "--device", "cpu", "--seed", "1"]
    for args in (["index"], ["mine-samples", "--matcher", "bm25", "--retrieval", "numpy", "--k", "2",
                             "--n-candidates", "8", "--n-random", "4"],
                 ["pretrain", "--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1", "--batch-size",
                  "16", "--epochs", "1"]):
        result = runner.invoke(app, [*args, *common])
        assert result.exit_code == 0, result.output
    return work


def setup_recipe(work, name: str, **options):
    """(model, recipe) as `cldg <name>-train` builds them, on the workdir's latest inputs."""
    from cldg.approaches import get_approach
    from cldg.artifacts import ArtifactStore
    from cldg.stages.train import for_approach, resolve_inputs
    from cldg.training.recipes import TrainInputs

    approach = get_approach(name)
    cfg = for_approach(name).Config(**options)
    inputs = resolve_inputs(ArtifactStore(work), approach, cfg)
    train_inputs = TrainInputs(inputs["prepare"].path, {k: a.path for k, a in inputs.items()},
                               {k: a.config for k, a in inputs.items()})
    return approach.recipe_class().setup(cfg, train_inputs, 1, torch.device("cpu"))


@pytest.mark.parametrize("name, expected", [("dpo", math.log(2)), ("bco", 2 * math.log(2)), ("kto", 0.5)])
def test_before_any_step_the_preference_losses_take_their_value_at_zero_log_ratio(mined_workdir, name, expected):
    model, recipe = setup_recipe(mined_workdir, name, max_valid_pairs=12, beta=0.7)
    model.eval()
    with torch.no_grad():
        figures = recipe.validate(model)
    assert figures["criterion"] == pytest.approx(expected, abs=1e-5)
    assert figures["margin"] == pytest.approx(0.0, abs=1e-5)
    # the rejected response is the pair's own context with a mined response: same prompt, another response
    triples = recipe.valid
    assert all(c != r for c, r in zip(triples.chosen, triples.rejected)) or len(triples) == 0
    assert len(triples) and triples.ref.shape == (len(triples), 3)


@pytest.mark.parametrize("name, options", [("unlikelihood", {"alpha": 2.5}), ("ct", {"alpha": 0.7, "window": 3}),
                                           ("simctg", {"margin": 0.9})])
def test_ul_ct_simctgs_valid_criterion_is_their_objective_not_the_nll(mined_workdir, name, options):
    # NLL alone favoured the checkpoint closest to the MLE reference (issue 16 review 3)
    import torch.nn.functional as F

    from cldg.training import objectives
    from cldg.training.recipes.pairs import token_nll

    model, recipe = setup_recipe(mined_workdir, name, max_valid_pairs=12, batch_size=5, **options)
    model.eval()
    nll_sum, term_sum, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        figures = recipe.validate(model)
        contexts, responses = recipe.valid
        for i in range(0, len(contexts), 5):
            out = recipe.scorer.output(model, recipe.scorer.batch(contexts[i:i + 5], responses[i:i + 5]), hidden=True)
            nll, n = token_nll(out)
            lprobs = F.log_softmax(out.logits.float(), -1)
            term = {"unlikelihood": lambda: objectives.unlikelihood_token_loss(lprobs, out.targets, out.mask),
                    "ct": lambda: objectives.ct_loss(lprobs, out.targets, out.mask, 3),
                    "simctg": lambda: objectives.simctg_loss(out.hidden, out.mask, 0.9)}[name]()
            nll_sum, term_sum, tokens = nll_sum + nll.item() * n, term_sum + term.item() * n, tokens + n
    weight = options.get("alpha", 1.0)
    assert len(contexts) == 12 and term_sum > 0
    assert figures["nll"] == pytest.approx(nll_sum / tokens, rel=1e-5)
    assert figures["criterion"] == pytest.approx((nll_sum + weight * term_sum) / tokens, rel=1e-5)
    assert figures["criterion"] > figures["nll"] + 1e-3


def test_simctg_states_are_the_input_of_the_output_layer(mined_workdir):
    model, recipe = setup_recipe(mined_workdir, "simctg")
    model.eval()
    batch = next(iter(recipe.batches(0, 0)))
    with torch.no_grad():
        out = recipe.scorer.output(model, batch.inputs, hidden=True)
        assert torch.allclose(model.out(out.hidden), out.logits, atol=1e-5)


def test_simctg_states_in_training_are_taken_before_the_output_dropout(mined_workdir):
    """seq2seq/HRED/HRAN apply dropout to the state that feeds `out`: in training SimCTG's margin must see the
    state, not dropout's zeros (and the logits must stay what the model computes)."""
    model, recipe = setup_recipe(mined_workdir, "simctg")
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    batch = next(iter(recipe.batches(0, 0)))
    with torch.no_grad():
        torch.manual_seed(3)
        out = recipe.scorer.output(model, batch.inputs, hidden=True)
        torch.manual_seed(3)
        plain = recipe.scorer.output(model, batch.inputs)
        assert torch.equal(out.logits, plain.logits)  # the hooks change nothing the model computes
        states = out.hidden[out.mask]
        assert states.numel() and int((states == 0).sum()) == 0  # tanh states: dropout's zeros would show


def test_every_objective_trains_from_the_reference_and_evaluate_takes_it(mined_workdir):
    from cldg.artifacts import ArtifactStore
    from cldg.models import load_model

    work = mined_workdir
    store = ArtifactStore(work)
    reference = load_model(store.latest("reference").path)
    extra = {"unlikelihood": ["--sequence-level-rate", "0.5", "--ngram", "2"], "ct": ["--window", "3"],
             "bco": ["--batch-delta"]}
    for name in ("unlikelihood", "ct", "simctg", "dpo", "bco", "kto"):
        result = runner.invoke(app, [f"{name}-train", "--workdir", str(work), *FAST, *extra.get(name, [])])
        assert result.exit_code == 0, f"{name}: {result.output}"
        art = store.latest(name)
        metrics = json.loads(art.file("metrics.json").read_text())
        assert metrics["approach"] == name and metrics["steps"] == 2
        assert set(art.manifest["inputs"]) >= {"prepare", "reference"}
        trained = load_model(art.path)
        changed = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                         reference.state_dict().values())]
        assert any(changed), f"{name}: two steps left the reference's weights as they were"
    result = runner.invoke(app, ["evaluate", "--workdir", str(work), "--model", "dpo", "--limit", "4", "--max-len",
                                 "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(store.latest("eval").file("metrics.json").read_text())["model"] == "dpo"


@pytest.mark.parametrize("args, expected", [
    (["dpo-train", "--beta", "0"], "--beta must be > 0"),
    (["ct-train", "--lora-r", "4"], "--lora-r 4: LoRA is for hf: models"),
    (["unlikelihood-train", "--sequence-level-rate", "2"], "--sequence-level-rate must be in [0, 1]"),
])
def test_bad_options_are_one_line_and_exit_2(mined_workdir, args, expected):
    result = runner.invoke(app, [*args, "--workdir", str(mined_workdir), *FAST])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("disable", [True, False])
def test_dpos_first_training_step_is_log_2_with_dropout_disabled(mined_workdir, disable):
    """The reference's log-probs are computed in eval mode; the policy trains in train mode, so with dropout on
    (the reference was pretrained with dropout 0.1) the first step's loss is not log 2 unless dropout is off."""
    model, recipe = setup_recipe(mined_workdir, "dpo", max_train_pairs=8, beta=0.7, disable_dropout=disable)
    assert model.training and any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    torch.manual_seed(0)
    loss, _ = recipe.loss(model, next(iter(recipe.batches(0, 0))).to(torch.device("cpu")), 0)
    assert (loss.item() == pytest.approx(math.log(2), abs=1e-5)) == disable


def test_a_mined_negative_with_the_pairs_own_text_is_dropped(mined_workdir, prepared_workdir, monkeypatch):
    """A duplicate response mined as the pair's negative would make chosen == rejected (a zero DPO margin)."""
    import cldg.data.pairs
    from cldg.artifacts import ArtifactStore
    from cldg.training.recipes.pairs import mined_triples

    prepare, samples = prepared_workdir[1].path, ArtifactStore(mined_workdir).latest("samples").path
    before = mined_triples(prepare, samples, "train", 0, 1, 3)
    read = cldg.data.pairs.read_pairs

    def half_the_same(path):  # every even pair answers "same": their negatives among them repeat the pair's text
        t = read(path)
        t.response = ["same" if p % 2 == 0 else r for p, r in zip(t.pair_id, t.response)]
        return t

    monkeypatch.setattr(cldg.data.pairs, "read_pairs", half_the_same)
    after = mined_triples(prepare, samples, "train", 0, 1, 3)
    assert all(c != r for c, r in zip(after.chosen, after.rejected))
    assert 0 < len(after) < len(before)


def test_kto_on_a_single_pair_is_one_clean_error(mined_workdir):
    from cldg.errors import CldgError

    with pytest.raises(CldgError, match=r"^KTO: 1 train pair .* need at least 2$"):
        setup_recipe(mined_workdir, "kto", max_train_pairs=1)
