"""Issue 15: DIALOGWAE (Gu et al., 2019): the WGAN-GP pieces, the Gaussian-mixture prior, the alternating updates, and
a tiny run through the generic stage (resumed after Ctrl-C, evaluated with z sampled from the prior)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cldg.cli import app

runner = CliRunner()


def test_gradient_penalty_of_a_linear_critic_equals_the_hand_computed_value_and_trains_the_critic():
    from cldg.training.losses import gradient_penalty

    w = torch.tensor([3.0, 4.0], requires_grad=True)  # D(z) = w . z: its gradient is w everywhere, norm 5
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    gp = gradient_penalty(lambda z: z @ w, real, fake, weight=10.0)
    assert gp.item() == pytest.approx(10 * (5 - 1) ** 2)  # 160
    # the penalty's gradient reaches the critic: d/dw 10 (|w| - 1)^2 = 20 (|w| - 1) w / |w| = [48, 64]
    grad, = torch.autograd.grad(gp, w)
    assert grad.tolist() == pytest.approx([48.0, 64.0])
    # a critic of unit slope pays nothing
    assert gradient_penalty(lambda z: z @ torch.tensor([0.6, 0.8]), real, fake).item() == pytest.approx(0.0)


def test_gradient_penalty_is_taken_at_the_interpolated_points_row_by_row():
    from cldg.training.losses import gradient_penalty, wasserstein_estimate

    # D(z) = |z|^2 / 2 per row: its gradient at z is z. alpha = (0.5, 1): points (2, 0) and (0, 0.5), norms 2, 0.5
    real = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    fake = torch.tensor([[1.0, 0.0], [0.0, 9.0]])
    gp = gradient_penalty(lambda z: 0.5 * (z ** 2).sum(-1), real, fake, weight=10.0, alpha=torch.tensor([0.5, 1.0]))
    assert gp.item() == pytest.approx(10 * ((2 - 1) ** 2 + (0.5 - 1) ** 2) / 2)  # 6.25
    assert wasserstein_estimate(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])).item() == pytest.approx(2.5)


def test_the_mixture_prior_samples_one_component_per_row_at_softmax_frequencies():
    from cldg.models.dialogwae import mixture_sample

    torch.manual_seed(0)
    B, K, Z = 6000, 3, 4
    probs = torch.tensor([0.2, 0.3, 0.5])
    mu = torch.arange(K, dtype=torch.float).view(1, K, 1).expand(B, K, Z) * 10  # component k has mean 10 k
    logvar = torch.full((B, K, Z), -30.0)                                    # ~no spread: e = the chosen mean
    pi = probs.log().expand(B, K).clone().requires_grad_(True)
    e, choice = mixture_sample(pi, mu, logvar, temperature=0.1)
    assert e.shape == (B, Z) and choice.shape == (B, K)
    assert torch.equal(choice.sum(-1), torch.ones(B)) and set(choice.unique().tolist()) == {0.0, 1.0}
    # each row's code is the mean of the component it picked
    assert torch.allclose(e, (choice.argmax(-1).float() * 10).unsqueeze(1).expand(B, Z), atol=1e-3)
    # Gumbel-max: the components are picked at the mixture's probabilities
    assert choice.mean(0).tolist() == pytest.approx(probs.tolist(), abs=0.025)
    # the straight-through gradient reaches the mixture weights
    e.sum().backward()
    assert pi.grad is not None and pi.grad.abs().sum() > 0
    # without sampling: the most probable component's mean
    e_det, choice_det = mixture_sample(pi.detach()[:2], mu[:2], logvar[:2], 0.1, sample=False)
    assert choice_det.argmax(-1).tolist() == [2, 2] and torch.allclose(e_det, torch.full((2, Z), 20.0))


def test_rmsprop_step_equals_torch_rmsprop():
    from cldg.training.recipes.dialogwae import rmsprop_step

    torch.manual_seed(0)
    mine, theirs = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
    with torch.no_grad():
        theirs.copy_(mine)
    opt = torch.optim.RMSprop([theirs], lr=0.01)
    avg = torch.zeros(5)
    for _ in range(3):
        g = torch.randn(5)
        rmsprop_step([mine], [g], [avg], 0.01)
        theirs.grad = g.clone()
        opt.step()
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert torch.allclose(avg, opt.state[theirs]["square_avg"])


def tiny_wae():
    from cldg.models import build_model
    from cldg.training.recipes.dialogwae import DialogWAETraining

    torch.manual_seed(0)
    return DialogWAETraining(build_model("dialogwae", 30, embedding_dim=8, utterance_size=6, context_size=8,
                                         latent_size=4, components=3, critic_hidden=12, dropout=0.0))


def tiny_batch():
    from cldg.data.batching import Limits, collate_ids

    contexts = [([5, 6, 4, 7], [[5, 6], [7]]), ([8, 9], [[8, 9]]), ([10], [[10]])]
    return collate_ids(contexts, [[11, 12], [13], [14, 15, 16]], Limits(2, 5, 10, 6))


def test_critic_and_generator_steps_move_only_their_own_networks_and_leave_no_gradients():
    """The Trainer's Adam steps every parameter with a .grad: the critic and generator updates must leave none, and
    each must change only its networks (the critic: D; the generators: RecNet, Q, PriNet, G)."""
    from cldg.training.recipes.dialogwae import DialogWAERecipe

    training = tiny_wae()
    recipe = DialogWAERecipe([], [], 3, 0, torch.device("cpu"), critic_steps=1, gp_weight=10.0,
                             generator_lr=1e-2, critic_lr=1e-2)
    batch = tiny_batch()
    before = {k: v.clone() for k, v in training.wae.state_dict().items()}
    w, gp = recipe.critic_step(training, batch)
    assert gp >= 0
    changed = {k for k, v in training.wae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("critic.") for k in changed)
    assert all(p.grad is None for p in training.parameters())
    assert any(b.abs().sum() > 0 for b in training.averages("critic"))

    before = {k: v.clone() for k, v in training.wae.state_dict().items()}
    c = training.wae.encode_context(batch).detach()
    recipe.generator_step(training, c, training.wae.encode_response(batch).detach())
    changed = {k.split(".")[0] for k, v in training.wae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"posterior_net", "posterior_mu", "posterior_logvar", "posterior_generator", "prior_net",
                       "prior_pi", "prior_mu", "prior_logvar", "prior_generator"}
    assert all(p.grad is None for p in training.parameters())


def test_the_critic_raises_the_wasserstein_estimate_and_the_generators_lower_it():
    """The two players of Algorithm 1, each against the other held fixed: critic steps make E[D(z)] - E[D(z~)]
    positive (it tells posterior from prior codes), generator steps then push it down."""
    from cldg.training.recipes.dialogwae import DialogWAERecipe

    training, batch = tiny_wae(), tiny_batch()
    recipe = DialogWAERecipe([], [], 3, 0, torch.device("cpu"), critic_steps=1, gp_weight=10.0, generator_lr=1e-2,
                             critic_lr=1e-2)
    critic = [recipe.critic_step(training, batch)[0] for _ in range(40)]
    assert sum(critic[-5:]) / 5 > max(0.2, sum(critic[:5]) / 5 + 0.2)
    c, x = training.wae.encode_context(batch).detach(), training.wae.encode_response(batch).detach()
    generator = [recipe.generator_step(training, c, x) for _ in range(10)]
    assert generator[-1] < generator[0] - 1.0


def test_decoding_samples_the_prior_and_teacher_forcing_is_deterministic():
    from cldg.decoding.search import DecodeConfig, generate

    wae = tiny_wae().wae.eval()
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.equal(wae(batch), wae(batch))
        torch.manual_seed(1)
        z1 = wae.init_decoding(batch)["hidden"]
        torch.manual_seed(2)
        z2 = wae.init_decoding(batch)["hidden"]
    assert z1.shape == (1, 3, 8 + 4) and not torch.equal(z1, z2)
    torch.manual_seed(3)
    first = generate(wae, batch, DecodeConfig(method="greedy", max_len=5))
    torch.manual_seed(3)
    assert generate(wae, batch, DecodeConfig(method="greedy", max_len=5)) == first


WAE_ARGS = ["--embedding-dim", "16", "--utterance-size", "8", "--context-size", "16", "--latent-size", "8",
            "--critic-hidden", "16", "--critic-steps", "2", "--dropout", "0.1", "--batch-size", "16", "--epochs", "1",
            "--device", "cpu", "--seed", "1"]


def test_dialogwae_trains_resumes_exactly_and_evaluates_with_samples_from_the_prior(tmp_path, prepared_workdir,
                                                                                     monkeypatch):
    from safetensors.torch import load_file

    from cldg.artifacts import ArtifactStore
    from cldg.training.recipes.dialogwae import DialogWAERecipe

    _, prepared = prepared_workdir
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for work in (straight, resumed):
        work.mkdir()
    args = ["dialogwae-train", "--prepare-dir", str(prepared.path), *WAE_ARGS]
    result = runner.invoke(app, [*args, "--workdir", str(straight)])
    assert result.exit_code == 0, result.output

    critic_step = DialogWAERecipe.critic_step
    calls = []

    def ctrl_c_in_step_3s_second_critic_update(self, training, batch):
        calls.append(1)
        if len(calls) == 2 * self.critic_steps + 2:  # step 3 (step index 2): its first critic update is done
            raise KeyboardInterrupt
        return critic_step(self, training, batch)

    # Ctrl-C halfway through a step, after it has changed the critic: the trainer puts the step's start back
    monkeypatch.setattr(DialogWAERecipe, "critic_step", ctrl_c_in_step_3s_second_critic_update)
    assert runner.invoke(app, [*args, "--workdir", str(resumed)]).exit_code != 0
    saved = json.loads(next((resumed / "dialogwae").glob("*.partial/resume/last.json")).read_text())
    assert saved["step"] == 2
    monkeypatch.setattr(DialogWAERecipe, "critic_step", critic_step)
    result = runner.invoke(app, [*args, "--workdir", str(resumed)])
    assert result.exit_code == 0, result.output

    a, b = ArtifactStore(straight).latest("dialogwae"), ArtifactStore(resumed).latest("dialogwae")
    assert a.fingerprint == b.fingerprint
    # the critic's and generators' RMSprop state is checkpointed: the resumed run ends with the same weights
    wa, wb = load_file(str(a.file("model.safetensors"))), load_file(str(b.file("model.safetensors")))
    assert wa.keys() == wb.keys() and not any(k.startswith("rmsprop") for k in wa)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    metrics = json.loads(a.file("metrics.json").read_text())
    assert metrics["approach"] == "dialogwae" and metrics["components"] == 3 and metrics["steps"] > 2
    log = [json.loads(line) for line in a.file("train-log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["type"] == "train"]
    assert train and all({"rec", "critic", "gp"} <= set(r) and r["gp"] >= 0 for r in train)
    assert any("prior_nll" in r for r in log if r["type"] == "valid")

    ev = ["evaluate", "--workdir", str(straight), "--model", "dialogwae", "--limit", "6", "--max-len", "8",
          "--device", "cpu"]
    result = runner.invoke(app, ev)
    assert result.exit_code == 0, result.output
    store = ArtifactStore(straight)
    gens = [json.loads(line)["generated"] for line in store.latest("eval").file("generations.jsonl").read_text()
            .splitlines()]
    assert len(gens) == 6
    assert runner.invoke(app, [*ev, "--seed", "2"]).exit_code == 0
    other = [json.loads(line)["generated"] for line in store.latest("eval").file("generations.jsonl").read_text()
             .splitlines()]
    assert other != gens  # z comes from the prior: another seed, other responses
    # each context draws its Gumbel and Gaussian noise from its own row seed: --batch-size changes no response
    assert runner.invoke(app, [*ev, "--batch-size", "2", "--force"]).exit_code == 0
    batched = [json.loads(line)["generated"] for line in store.latest("eval").file("generations.jsonl").read_text()
               .splitlines()]
    assert batched == gens


def test_bad_dialogwae_options_are_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["dialogwae-train", "--workdir", str(tmp_path), "--components", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--components must be at least 1" in lines[0]
    result = runner.invoke(app, ["dialogwae-train", "--workdir", str(tmp_path), "--critic-steps", "0"])
    assert result.exit_code == 2 and "--critic-steps must be at least 1" in result.output
