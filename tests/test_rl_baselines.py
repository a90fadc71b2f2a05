"""Issue 15: the policy-gradient baselines, DEEPRL (Li et al. 2016b) and ADVERSARIAL (REGS, Li et al. 2017)."""
from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from cldg.cli import app

runner = CliRunner()


def tiny_policy(seed: int = 0, vocab: int = 12):
    from cldg.models import build_model

    torch.manual_seed(seed)
    return build_model("seq2seq", vocab, embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.0)


def context_batch(rows: int = 4):
    from cldg.data.batching import Limits, collate_ids

    contexts = [([6 + i % 3, 7, 8], [[6 + i % 3, 7, 8]]) for i in range(rows)]
    return collate_ids(contexts, None, Limits())


# -- REINFORCE ------------------------------------------------------------------------------------------------

def test_reinforce_loss_is_minus_the_advantage_times_the_summed_log_probs():
    from cldg.training.policy_gradient import reinforce_loss

    token_logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])  # row 2 has one real token
    # by hand: -(2 * (-3) + (-1) * (-0.5)) / 2 = 2.75
    assert reinforce_loss(token_logp, torch.tensor([2.0, -1.0])).item() == pytest.approx(2.75)
    # per token: -((1 * -1 + 0 * -2) + (3 * -0.5)) / 2 = 1.25
    assert reinforce_loss(token_logp, torch.tensor([[1.0, 0.0], [3.0, 9.0]])).item() == pytest.approx(1.25)
    # the advantage is a constant: no gradient reaches it
    adv = torch.tensor([1.0, 1.0], requires_grad=True)
    reinforce_loss(token_logp.requires_grad_(), adv).backward()
    assert adv.grad is None and token_logp.grad.tolist() == [[-0.5, -0.5], [-0.5, -0.5]]


@pytest.mark.parametrize("per_token", [False, True])
def test_one_step_on_a_positive_advantage_raises_the_sampled_tokens_log_prob_and_a_negative_one_lowers_it(per_token):
    from cldg.training.policy_gradient import policy_logprobs, reinforce_loss, sample_responses

    batch = context_batch()
    torch.manual_seed(3)
    tokens = sample_responses(tiny_policy(), batch, max_len=5)
    changes = {}
    for sign in (1.0, -1.0):
        policy = tiny_policy()  # the same weights each time
        before = policy_logprobs(policy, batch, tokens).sum(1)
        advantage = torch.full((batch.size,), sign)
        if per_token:
            advantage = advantage.unsqueeze(1) * tokens.ne(0).float()
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
        reinforce_loss(policy_logprobs(policy, batch, tokens), advantage).backward()
        optimizer.step()
        with torch.no_grad():
            changes[sign] = (policy_logprobs(policy, batch, tokens).sum(1) - before).sum().item()
    assert changes[1.0] > 0 > changes[-1.0]


@pytest.mark.parametrize("rewards_from", ["sequence", "rollouts"])
def test_reinforce_with_the_baseline_learns_a_toy_reward(rewards_from):
    """Reward: the share of word 9 in a response. A few dozen steps of REINFORCE (one return per response, or REGS's
    per-token rollout rewards) raise it well above an untrained policy's."""
    from cldg.text.tokenizer import PAD
    from cldg.training.policy_gradient import (PolicyTrainee, policy_logprobs, reinforce_loss, rollout_rewards,
                                               sample_responses)

    def share_of_nine(rows, responses):
        return (responses.eq(9).sum(1) / responses.ne(PAD).sum(1).clamp_min(1)).float()

    batch = context_batch(rows=16)
    trainee = PolicyTrainee(tiny_policy(seed=1))
    optimizer = torch.optim.Adam(trainee.parameters(), lr=0.03)
    torch.manual_seed(0)
    shares = []
    for _ in range(40):
        tokens = sample_responses(trainee.policy, batch, max_len=4)
        real = tokens.ne(PAD)
        if rewards_from == "sequence":
            rewards = share_of_nine(None, tokens)
            advantage = trainee.advantage(rewards)
        else:
            rewards = rollout_rewards(trainee.policy, batch, tokens, 2, 4, share_of_nine)
            advantage = trainee.advantage(rewards, real) * real
        shares.append(share_of_nine(None, tokens).mean().item())
        optimizer.zero_grad()
        reinforce_loss(policy_logprobs(trainee, batch, tokens), advantage).backward()
        optimizer.step()
    assert sum(shares[:5]) / 5 < 0.3 and sum(shares[-5:]) / 5 > 0.6


def test_sampled_responses_obey_the_decoding_bans_and_score_under_the_same_distribution():
    from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK
    from cldg.training.policy_gradient import policy_logprobs, sample_responses

    batch = context_batch(rows=16)
    torch.manual_seed(0)
    policy = tiny_policy(vocab=9)  # few words: EOS and the banned ids are likely under an untrained model
    tokens = sample_responses(policy, batch, max_len=6)
    assert tokens.size(1) <= 6 and not (tokens[:, 0] == EOS).any()
    assert not torch.isin(tokens, torch.tensor([BOS, SEP, UNK])).any()
    for row in tokens.tolist():  # PAD only after EOS
        cut = row.index(EOS) + 1 if EOS in row else len(row)
        assert PAD not in row[:cut] and set(row[cut:]) <= {PAD}
    logp = policy_logprobs(policy, batch, tokens)
    assert torch.isfinite(logp).all() and (logp[tokens.eq(PAD)] == 0).all() and (logp[tokens.ne(PAD)] < 0).all()


def test_rollout_rewards_score_each_prefix_completed_and_the_whole_response_once():
    from cldg.text.tokenizer import PAD
    from cldg.training.policy_gradient import rollout_rewards, sample_responses

    batch = context_batch(rows=6)
    torch.manual_seed(1)
    policy = tiny_policy()
    tokens = sample_responses(policy, batch, max_len=6)
    calls = []

    def length_score(rows, responses):  # the completed response's real tokens (EOS counts)
        calls.append(len(rows))
        return responses.ne(PAD).sum(1).float()

    rewards = rollout_rewards(policy, batch, tokens, n_rollouts=3, max_len=6, score=length_score)
    lengths = tokens.ne(PAD).sum(1)
    assert calls[0] == batch.size and all(n % 3 == 0 for n in calls[1:])  # whole responses, then 3 per prefix
    for b in range(batch.size):
        n = int(lengths[b])
        assert rewards[b, n - 1] == n and (rewards[b, n:] == 0).all()  # the whole response: its own score
        for t in range(n - 1):  # a completion keeps the prefix and stops at max_len
            assert t + 1 < rewards[b, t] <= 6
    first_token = rollout_rewards(policy, batch, tokens, 2, 6, lambda rows, r: r[:, 0].float())
    assert torch.equal(first_token, tokens[:, :1].float().expand_as(tokens) * tokens.ne(PAD))


def test_rollouts_continue_from_the_prefix_state_and_keep_the_whole_prefix(monkeypatch):
    """Each rollout from prefix y_1..y_t starts from the decoder state that has read BOS y_1..y_t: its first logits
    equal the teacher-forced logits at position t+1 (a rollout that fed y_t twice, or skipped it, would not), and
    the completed response's first t+1 tokens are the sampled prefix."""
    from cldg.training import policy_gradient as pg

    batch = context_batch(rows=6)
    torch.manual_seed(2)
    policy = tiny_policy()
    tokens = pg.sample_responses(policy, batch, max_len=6)
    with torch.no_grad():
        teacher = policy.eval()(pg.with_responses(batch, tokens))  # [B, L, V]
    starts, scored = [], []
    real_continue = pg.continue_sampling

    def spy(model, state, prev, max_len, first_step=False, greedy=False):
        starts.append(model.decode_step(state, prev)[0])  # decode_step is functional: the state is unchanged
        return real_continue(model, state, prev, max_len, first_step, greedy)

    def score(rows, responses):
        scored.append((rows.clone(), responses.clone()))
        return torch.zeros(len(rows))

    monkeypatch.setattr(pg, "continue_sampling", spy)
    pg.rollout_rewards(policy, batch, tokens, 2, 6, score)
    prefixes = scored[1:]  # the first call scores the whole responses
    assert len(prefixes) == len(starts) >= 3
    for t, (logits, (rows, completed)) in enumerate(zip(starts, prefixes)):
        assert torch.allclose(logits, teacher[rows, t + 1], atol=1e-5), t
        assert torch.equal(completed[:, :t + 1], tokens[rows, :t + 1]), t


def test_policy_logprobs_score_the_sampled_tokens_in_eval_mode_with_gradients():
    """With dropout, the policy-gradient log-probs are those of the policy that sampled (eval mode), gradients flow,
    and the policy's train mode is restored."""
    from cldg.models import build_model
    from cldg.training.policy_gradient import constrained_logits, policy_logprobs, sample_responses, with_responses

    batch = context_batch(rows=8)
    torch.manual_seed(0)
    policy = build_model("seq2seq", 12, embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.5).train()
    tokens = sample_responses(policy, batch, max_len=5)
    logp = policy_logprobs(policy, batch, tokens)
    assert policy.training and all(m.training for m in policy.modules()) and logp.requires_grad
    with torch.no_grad():
        logits = policy.eval()(with_responses(batch, tokens))
        first = torch.zeros(logits.shape[:2], dtype=torch.bool)
        first[:, 0] = True
        expected = torch.log_softmax(constrained_logits(logits, first), -1).gather(-1, tokens.unsqueeze(-1))
        expected = expected.squeeze(-1).masked_fill(tokens.eq(0), 0.0)
    policy.train()
    assert torch.allclose(logp, expected, atol=1e-6)
    logp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_teacher_forcing_is_reinforce_with_reward_one_per_sequence():
    from cldg.data.batching import Limits, collate_ids
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import nll_loss, sequence_logprob
    from cldg.training.policy_gradient import teacher_forcing_loss

    batch = collate_ids([([6, 7], [[6, 7]]), ([8], [[8]])], [[5, 6, 7, 8, 9, 10], [5]], Limits())
    logits = tiny_policy()(batch)
    loss, nll, n = teacher_forcing_loss(logits, batch.response_out)
    per_sequence = -sequence_logprob(logits, batch.response_out, PAD).sum() / 2  # summed over tokens, mean over B
    per_token, tokens = nll_loss(logits, batch.response_out, PAD)
    assert loss.item() == pytest.approx(per_sequence.item()) and n == tokens == 9
    assert nll == pytest.approx(per_token.item()) and loss.item() == pytest.approx(per_token.item() * 9 / 2)


def _float32(method, *args):
    with torch.autocast("cpu", enabled=False):
        return method(*args)


def test_rollout_rewards_are_scored_in_float32_under_autocast():
    """The Trainer's bf16 autocast is off while rewards are scored (CPU autocast stands in for CUDA's here)."""
    from cldg.models.discriminator import DiscriminatorConfig, HierarchicalDiscriminator
    from cldg.text.tokenizer import PAD
    from cldg.training.policy_gradient import rollout_rewards, sample_responses

    batch = context_batch(rows=6)
    torch.manual_seed(4)
    policy, d = tiny_policy(), HierarchicalDiscriminator(12, DiscriminatorConfig(8, 8))
    tokens = sample_responses(policy, batch, max_len=5)

    def human_probability(rows, responses):
        return torch.sigmoid(d(batch.context_turns.index_select(0, rows), responses))

    plain = rollout_rewards(policy, batch, tokens, 1, 5, human_probability)
    # The policy itself decodes in float32: oneDNN has no bf16 LSTM on a CPU without AVX512-BF16 (an AVX2-only
    # EPYC fails with "could not create a primitive descriptor"), and what is under test is the reward scoring,
    # which still runs inside the outer autocast unless rollout_rewards turns it off.
    for name in ("init_decoding", "decode_step"):
        method = getattr(policy, name)
        setattr(policy, name, lambda *a, _m=method: _float32(_m, *a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = rollout_rewards(policy, batch, tokens, 1, 5, human_probability)
    last = (tokens.ne(PAD).sum(1) - 1).unsqueeze(1)  # the whole responses' scores (the rollouts' draws may differ)
    assert torch.equal(plain.gather(1, last), autocast.gather(1, last))


def test_the_baseline_is_a_running_mean_that_starts_at_the_first_batch_and_survives_a_checkpoint():
    from cldg.training.policy_gradient import PolicyTrainee

    trainee = PolicyTrainee(tiny_policy())
    assert trainee.advantage(torch.tensor([1.0, 3.0]), momentum=0.5).tolist() == [-1.0, 1.0]
    assert trainee.advantage(torch.tensor([4.0, 6.0]), momentum=0.5).tolist() == [2.0, 4.0]  # b = 2, then 3.5
    copy = PolicyTrainee(tiny_policy())
    copy.load_state_dict(trainee.state_dict())
    assert float(copy.baseline) == 3.5 and int(copy.baseline_seen) == 2
    masked = trainee.advantage(torch.tensor([[1.0, 100.0]]), torch.tensor([[True, False]]), momentum=0.5)
    assert masked.tolist() == [[-2.5, 96.5]] and float(trainee.baseline) == 2.25


# -- the discriminator ---------------------------------------------------------------------------------------

def topic_pairs(n: int, rng: random.Random):
    """Contexts, their responses and shuffled responses, each pair's words from one of four topics (ids 5-8, 9-12,
    ...): a context's shuffled response is the next pair's of another topic."""
    contexts, responses, topics = [], [], []
    for _ in range(n):
        topic = rng.randrange(4)
        words = lambda k: [5 + 4 * topic + rng.randrange(4) for _ in range(k)]  # noqa: E731
        contexts.append((words(4), [words(2), words(2)]))
        responses.append(words(rng.randint(2, 4)))
        topics.append(topic)
    shuffled = [next(responses[(i + k) % n] for k in range(1, n) if topics[(i + k) % n] != topics[i])
                for i in range(n)]
    return contexts, responses, shuffled


def test_the_discriminator_learns_to_tell_human_responses_from_shuffled_ones():
    from cldg.data.batching import Limits, collate_ids
    from cldg.models.discriminator import DiscriminatorConfig, HierarchicalDiscriminator
    from cldg.training.policy_gradient import discriminator_loss

    rng = random.Random(0)
    torch.manual_seed(0)
    d = HierarchicalDiscriminator(21, DiscriminatorConfig(embedding_dim=16, hidden_size=16))
    optimizer = torch.optim.Adam(d.parameters(), lr=0.01)

    def batch_of(n):
        contexts, responses, shuffled = topic_pairs(n, rng)
        human = collate_ids(contexts, responses, Limits())
        return human.context_turns, human.response_out, collate_ids(contexts, shuffled, Limits()).response_out

    turns, human, shuffled = batch_of(200)
    with torch.no_grad():
        _, accuracy_before = discriminator_loss(d(turns, human), d(turns, shuffled))
    for _ in range(60):
        t, h, s = batch_of(32)
        loss, _ = discriminator_loss(d(t, h), d(t, s))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, accuracy = discriminator_loss(d(turns, human), d(turns, shuffled))
    assert accuracy_before < 0.7 and accuracy > 0.9


def test_a_discriminator_score_does_not_depend_on_the_other_rows_of_its_batch():
    """The turn-level GRU reads a row's own turns and its response only: scored alone or beside a context with
    more turns (more empty left-padding slots for this row), the logit is the same."""
    from cldg.data.batching import Limits, collate_ids
    from cldg.models.discriminator import DiscriminatorConfig, HierarchicalDiscriminator
    from cldg.text.tokenizer import SEP

    torch.manual_seed(0)
    d = HierarchicalDiscriminator(21, DiscriminatorConfig(embedding_dim=8, hidden_size=8)).eval()
    one_turn = ([5, 6, 7], [[5, 6, 7]])
    three_turns = ([8, 9, SEP, 10, SEP, 11, 12], [[8, 9], [10], [11, 12]])
    responses = [[13, 14], [15, 16, 17]]
    limits = Limits(max_context_turns=3)
    alone = collate_ids([one_turn], responses[:1], limits)
    beside = collate_ids([one_turn, three_turns], responses, limits)
    assert beside.context_turns.shape[1] > alone.context_turns.shape[1]
    with torch.no_grad():
        a = d(alone.context_turns, alone.response_out)
        b = d(beside.context_turns, beside.response_out)
        c = d(beside.context_turns[1:], beside.response_out[1:])
    assert torch.allclose(a, b[:1], atol=1e-6) and torch.allclose(c, b[1:], atol=1e-6)


# -- end to end through the generic stage --------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_workdir(tmp_path_factory, pretrain_tiny_reference):
    """A workdir of its own with the tests' tiny MLE reference."""
    return pretrain_tiny_reference(tmp_path_factory.mktemp("rl"))


def interrupted_then_resumed(monkeypatch, recipe_class, args, stop_step: int, artifact_dir):
    """Run `args`, Ctrl-C in the loss at `stop_step`, check the checkpoint, then rerun to the end."""
    loss = recipe_class.loss

    def ctrl_c(self, model, batch, step):
        if step == stop_step:
            raise KeyboardInterrupt
        return loss(self, model, batch, step)

    monkeypatch.setattr(recipe_class, "loss", ctrl_c)
    assert runner.invoke(app, args).exit_code != 0
    saved = json.loads(next(artifact_dir.glob("*.partial/resume/last.json")).read_text())
    assert saved["step"] == stop_step
    monkeypatch.setattr(recipe_class, "loss", loss)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"resuming from step {stop_step}" in result.output


def trained_log(work, name):
    from cldg.artifacts import ArtifactStore

    art = ArtifactStore(work).latest(name)
    log = [json.loads(line) for line in art.file("train-log.jsonl").read_text().splitlines()]
    return art, json.loads(art.file("metrics.json").read_text()), log


def changed_from_reference(work, art) -> bool:
    from cldg.artifacts import ArtifactStore
    from cldg.models import load_model

    reference = load_model(ArtifactStore(work).latest("reference").path)
    model = load_model(art.path)
    assert model.name == reference.name  # the artifact is the policy, a plain dialogue model
    return any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_deeprl_trains_resumes_and_evaluates(reference_workdir, monkeypatch):
    from cldg.artifacts import ArtifactStore
    from cldg.training.recipes.deeprl import DeepRLRecipe

    work = reference_workdir
    mmi = runner.invoke(app, ["mmi-train", "--workdir", str(work), "--batch-size", "16", "--max-steps", "2",
                              "--nbest", "2", "--tune-pairs", "2", "--lambdas", "0", "--gammas", "0", "--device", "cpu"])
    assert mmi.exit_code == 0, mmi.output
    backward = ArtifactStore(work).latest("mmi").path  # its backward model p(c|r) scores coherence's second term
    args = ["deeprl-train", "--workdir", str(work), "--batch-size", "8", "--max-steps", "5", "--turns", "3",
            "--curriculum-steps", "2", "--max-len", "6", "--valid-dialogues", "8", "--max-valid-pairs", "16",
            "--lr", "1e-3", "--backward-model", str(backward), "--device", "cpu", "--seed", "1"]
    interrupted_then_resumed(monkeypatch, DeepRLRecipe, args, 2, work / "deeprl")
    art, metrics, log = trained_log(work, "deeprl")
    assert metrics["approach"] == "deeprl" and metrics["steps"] == 5 and metrics["coherence"] == "forward + backward"
    assert metrics["backward_model"] == str(backward.resolve())
    assert metrics["reward_weights"] == {"ease": 0.25, "flow": 0.25, "coherence": 0.5}
    train = [r for r in log if r["type"] == "train"]
    assert train[0]["step"] == 1 and train[0]["turns"] == 2  # the curriculum starts at 2 turns
    assert all(k in train[0] for k in ("reward", "ease", "flow", "coherence", "baseline", "nll"))
    valid = [r for r in log if r["type"] == "valid"]
    assert valid and valid[-1]["criterion"] == pytest.approx(-valid[-1]["reward"])
    assert changed_from_reference(work, art)
    result = runner.invoke(app, ["evaluate", "--workdir", str(work), "--model", "deeprl", "--limit", "4",
                                 "--max-len", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output

    # --backward-model: an mmi artifact made from the reference's prepare artifact, else one line, exit 2
    import shutil

    other = work.parent / f"{work.name}-other-mmi"
    shutil.copytree(backward, other, dirs_exist_ok=True)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["inputs"]["prepare"]["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    reference = ArtifactStore(work).latest("reference").path
    for wrong, message in ((reference, "a 'reference' artifact, not an mmi one"),
                           (other, "made from prepare artifact 000000000000")):
        result = runner.invoke(app, ["deeprl-train", "--workdir", str(work), "--max-steps", "1", "--device", "cpu",
                                     "--backward-model", str(wrong)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_deeprl_rewards_equal_their_definitions(reference_workdir):
    """Ease of answering, information flow and semantic coherence of one simulated turn, recomputed here."""
    import math

    from cldg.approaches.deeprl import DeepRLOptions
    from cldg.artifacts import ArtifactStore
    from cldg.data.batching import collate_ids, context_from_ids
    from cldg.text.tokenizer import EOS, PAD
    from cldg.training.losses import sequence_logprob
    from cldg.training.recipes import TrainInputs
    from cldg.training.recipes.deeprl import DeepRLRecipe

    store = ArtifactStore(reference_workdir)
    ref = store.latest("reference")
    prepare = ref.manifest["inputs"]["prepare"]["path"]
    cfg = DeepRLOptions(max_valid_pairs=4, valid_dialogues=2)
    _, recipe = DeepRLRecipe.setup(cfg, TrainInputs(__import__("pathlib").Path(prepare), {"reference": ref.path},
                                                    {"reference": ref.config}), 1, torch.device("cpu"))
    recipe.backward = recipe.reference  # the reference stands in for p(q|a) (--backward-model takes mmi artifacts)
    model, lim = recipe.reference, recipe.limits
    history = [[5, 6, 7], [8, 9], [10, 11, 12]]
    answer = [5, 13, 7]
    ctx = collate_ids([context_from_ids(history, lim)], None, lim)
    tokens = torch.tensor([answer + [EOS]])
    got = recipe.rewards(ctx, tokens, [answer], [history])

    def logp(context_turns, response):
        b = collate_ids([context_from_ids(context_turns, lim)], [response], lim)
        return sequence_logprob(model(b), b.response_out, PAD).item() / (len(response) + 1)

    ease = -sum(logp([answer], s) for s in recipe.dull) / len(recipe.dull)
    emb = model.embedding.weight
    cos = torch.nn.functional.cosine_similarity(emb[answer].mean(0), emb[history[-2]].mean(0), dim=0).item()
    flow = -math.log(max(cos, 0.01))
    coherence = logp(history, answer) + logp([answer], history[-1])  # the reference stands in for p(q|a)
    assert got["ease"].item() == pytest.approx(ease, rel=1e-4)
    assert got["flow"].item() == pytest.approx(flow, rel=1e-4)
    assert got["coherence"].item() == pytest.approx(coherence, rel=1e-4)
    assert got["reward"].item() == pytest.approx(0.25 * ease + 0.25 * flow + 0.5 * coherence, rel=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the Trainer's bf16 autocast is off while rewards are scored
        again = recipe.rewards(ctx, tokens, [answer], [history])
    assert all(torch.equal(again[name], got[name]) for name in got)
    # the first turn of a one-turn context has no earlier turn of its own agent: no information-flow term
    assert recipe.rewards(ctx, tokens, [answer], [history[-1:]])["flow"].item() == 0.0


def test_adversarial_trains_resumes_and_evaluates(reference_workdir, monkeypatch):
    from cldg.training.recipes.adversarial import AdversarialRecipe

    from cldg.models.discriminator import HierarchicalDiscriminator

    longest, forward = [], HierarchicalDiscriminator.forward

    def recording(self, context_turns, response):  # D-steps, rollouts and validation alike
        longest.append(int(words_seen(response).max()))
        return forward(self, context_turns, response)

    monkeypatch.setattr(HierarchicalDiscriminator, "forward", recording)
    work = reference_workdir
    args = ["adversarial-train", "--workdir", str(work), "--batch-size", "8", "--max-steps", "7",
            "--d-pretrain-steps", "3", "--d-steps", "1", "--g-steps", "1", "--rollouts", "2", "--max-len", "5",
            "--max-valid-pairs", "16", "--d-embedding-dim", "8", "--d-hidden-size", "8", "--lr", "1e-3",
            "--device", "cpu", "--seed", "1"]
    interrupted_then_resumed(monkeypatch, AdversarialRecipe, args, 4, work / "adversarial")
    art, metrics, log = trained_log(work, "adversarial")
    assert metrics["approach"] == "adversarial" and metrics["steps"] == 7 and metrics["rollouts"] == 2
    assert 0 <= metrics["last_valid_d_acc"] <= 1 and 0 < metrics["last_valid_reward"] < 1
    train = [r for r in log if r["type"] == "train"]
    assert "d_loss" in train[0] and 0 <= train[0]["d_acc"] <= 1  # step 1 trains the discriminator
    valid = [r for r in log if r["type"] == "valid"]
    assert valid[-1]["improved"] and metrics["best_step"] == 7  # the last weights are kept
    assert changed_from_reference(work, art)
    assert max(longest) == 5  # human responses cut to --max-len 5, as the sampled ones are
    result = runner.invoke(app, ["evaluate", "--workdir", str(work), "--model", "adversarial", "--limit", "4",
                                 "--max-len", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_adversarial_steps_alternate_after_the_discriminator_pretraining():
    from cldg.approaches.adversarial import AdversarialOptions
    from cldg.training.recipes.adversarial import AdversarialRecipe

    recipe = AdversarialRecipe.__new__(AdversarialRecipe)
    recipe.cfg = AdversarialOptions(d_pretrain_steps=3, d_steps=2, g_steps=1)
    assert "".join("D" if recipe.discriminator_turn(s) else "G" for s in range(9)) == "DDDDDGDDG"


class RecordingDiscriminator(torch.nn.Module):
    """A HierarchicalDiscriminator that keeps the responses it is shown."""

    def __init__(self, vocab: int = 12):
        from cldg.models.discriminator import DiscriminatorConfig, HierarchicalDiscriminator

        super().__init__()
        self.d, self.seen = HierarchicalDiscriminator(vocab, DiscriminatorConfig(8, 8)), []

    def forward(self, context_turns, response):
        self.seen.append(response.detach().clone())
        return self.d(context_turns, response)


def words_seen(responses):
    """Words per row as the discriminator reads them (EOS and PAD dropped)."""
    from cldg.text.tokenizer import EOS, PAD

    return (responses.ne(PAD) & responses.ne(EOS)).sum(1)


def long_response_batch(rows: int = 8):
    from cldg.data.batching import Limits, collate_ids

    contexts = [([6 + i % 3, 7, 8], [[6 + i % 3, 7, 8]]) for i in range(rows)]
    return collate_ids(contexts, [[5 + (i + k) % 7 for k in range(10 + i % 3)] for i in range(rows)], Limits())


def adversarial_recipe(trainee, **options):
    from cldg.approaches.adversarial import AdversarialOptions
    from cldg.training.recipes.adversarial import AdversarialRecipe

    recipe = AdversarialRecipe.__new__(AdversarialRecipe)
    recipe.cfg = AdversarialOptions(**options)
    recipe.max_len, recipe.device = recipe.cfg.max_len, torch.device("cpu")
    return recipe


def test_adversarial_steps_show_d_responses_of_one_length_limit_and_log_only_their_own_figures():
    """Human responses (10-12 words) reach D cut to --max-len, the sampled ones' limit; a D-step's record holds its
    own accuracy and D's probability of human for its sampled responses, a G-step's its reward and D's accuracy on
    its batch (no figure carried over from the other network's last step); teacher forcing is per sequence."""
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob
    from cldg.training.policy_gradient import PolicyTrainee, discriminator_loss, sample_responses

    batch = long_response_batch()
    torch.manual_seed(0)
    d = RecordingDiscriminator()
    trainee = PolicyTrainee(tiny_policy(), d)
    recipe = adversarial_recipe(trainee, d_pretrain_steps=1, d_steps=1, g_steps=1, rollouts=2, max_len=4)
    generated = sample_responses(trainee.policy, batch, recipe.max_len)
    loss, info = recipe.discriminator_step(d, batch, generated)
    human, sampled = d.seen[0][:batch.size], d.seen[0][batch.size:]
    assert int(words_seen(human).max()) == 4 and int(words_seen(sampled).max()) <= 4
    with torch.no_grad():
        logits = d.d(batch.context_turns.repeat(2, 1, 1), d.seen[0])
    assert set(info) == {"d_loss", "d_acc", "reward", "tokens"}
    assert info["reward"] == pytest.approx(torch.sigmoid(logits[batch.size:]).mean().item(), abs=1e-6)
    assert info["d_acc"] == discriminator_loss(logits[:batch.size], logits[batch.size:])[1]

    d.seen.clear()
    loss, info = recipe.generator_step(trainee, trainee, batch, generated)
    assert "d_loss" not in info and {"reward", "d_acc", "pg", "baseline", "nll"} <= set(info)
    whole = d.seen[-1]  # after the rollouts: D on this batch's human and sampled responses
    assert torch.equal(whole[batch.size:], torch.nn.functional.pad(generated, (0, whole.size(1) - generated.size(1))))
    assert int(words_seen(whole[:batch.size]).max()) == 4 and int(words_seen(torch.cat(d.seen)).max()) <= 4
    with torch.no_grad():
        logits = d.d(batch.context_turns.repeat(2, 1, 1), whole)
    assert info["d_acc"] == discriminator_loss(logits[:batch.size], logits[batch.size:])[1]
    with torch.no_grad():  # teacher forcing: the human responses' summed NLL over the batch (dropout 0: the same)
        per_sequence = -sequence_logprob(trainee.policy(batch), batch.response_out, PAD).sum().item() / batch.size
    assert loss.item() - info["pg"] == pytest.approx(per_sequence, rel=1e-5)


def test_deeprl_adds_the_mle_term_per_sequence():
    from cldg.approaches.deeprl import DeepRLOptions
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob
    from cldg.training.policy_gradient import PolicyTrainee, sample_responses
    from cldg.training.recipes.deeprl import DeepRLRecipe

    batch = long_response_batch()
    torch.manual_seed(0)
    trainee = PolicyTrainee(tiny_policy())
    tokens = sample_responses(trainee.policy, batch, 5)
    recipe = DeepRLRecipe.__new__(DeepRLRecipe)
    recipe.cfg = DeepRLOptions(turns=1, curriculum_steps=0, mle_weight=0.5)
    reward = torch.linspace(0, 1, batch.size)
    recipe.simulate = lambda policy, b, n, greedy: [(b, tokens, dict.fromkeys(("reward", "ease", "flow",
                                                                                 "coherence"), reward))]
    loss, info = recipe.loss(trainee, batch, 0)
    with torch.no_grad():
        per_sequence = -sequence_logprob(trainee.policy(batch), batch.response_out, PAD).sum().item() / batch.size
    assert loss.item() - info["pg"] == pytest.approx(0.5 * per_sequence, rel=1e-5)


@pytest.mark.parametrize("command,args,message", [
    ("adversarial-train", ["--rollouts", "0"], "--rollouts must be at least 1"),
    ("deeprl-train", ["--baseline-momentum", "1"], "--baseline-momentum must be in [0, 1)"),
    ("deeprl-train", ["--backward-model", "/nowhere"], "--backward-model /nowhere: no manifest.json"),
    ("deeprl-train", ["--dull-responses", " | "], "--dull-responses"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, command, args, message):
    result = runner.invoke(app, [command, "--workdir", str(tmp_path), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("command", ["deeprl-train", "adversarial-train"])
def test_both_refuse_an_hf_reference_in_one_line(prepared_workdir, tmp_path, command):
    """A reference artifact that holds an hf: model (its model.json names "hf", its config has no cldg limits)."""
    from cldg.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path)
    with store.begin("reference", 1, {"model": "hf:tiny"}, {"prepare": prepared_workdir[1]}, force=False) as run:
        (run.dir / "model.json").write_text(json.dumps({"name": "hf", "config": {}, "vocab_size": 0}))
        run.commit()
    result = runner.invoke(app, [command, "--workdir", str(tmp_path), "--device", "cpu"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "is an hf: model" in lines[0], result.output


@pytest.mark.parametrize("command", ["deeprl-train", "adversarial-train"])
def test_both_refuse_ddp_in_one_line(reference_workdir, monkeypatch, command):
    from cldg.training import distributed

    monkeypatch.setattr(distributed, "current", lambda: distributed.DistInfo(rank=0, world_size=2))
    result = runner.invoke(app, [command, "--workdir", str(reference_workdir), "--device", "cpu", "--force"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "not under torchrun/DDP" in lines[0], result.output
