"""AdversarialRecipe: REGS (Li et al., 2017), a generator (the MLE reference, fine-tuned) against a hierarchical
discriminator of human vs generated responses.

Each step trains one of the two (Algorithm 1, with the discriminator pretrained first):

    steps < d_pretrain_steps, then d_steps of every d_steps + g_steps:
        discriminator step: BCE of D on the batch's human responses (1) and responses sampled from G (0)
    the other g_steps:
        generator step: sample y ~ G(.|c); reward of each token y_t = the mean D(human | c, y_1..y_t + rollout) over
        `rollouts` Monte Carlo completions (the whole response: D(c, y) itself); loss = REINFORCE with per-token
        advantages (reward - running-mean baseline) + teacher_forcing_weight * teacher forcing on the human
        responses, REINFORCE with reward 1 (`policy_gradient.teacher_forcing_loss`: summed over each response's
        tokens, averaged over the batch, the scale of the policy-gradient term)

D sees the human responses cut to `max_len` tokens, the limit of the sampled ones (and no EOS), so that length is no
cue. Sampling, the policy-gradient log-probabilities and the rollouts run the generator in eval mode (no dropout);
teacher forcing keeps dropout. Rewards are scored in float32 (autocast off).
Each step's log record holds that step's own figures: a D-step its d_loss, d_acc (on this batch, before the update)
and reward (D's mean probability of human for this batch's sampled responses); a G-step its reward, pg, baseline,
nll and d_acc (D on this batch's human and sampled responses).

Both networks sit in one `PolicyTrainee` (one optimizer: a step updates only the network that has gradients), so
checkpoints and resume carry the generator, the discriminator, their Adam states and the baseline.
Validation: the generator's valid NLL, and D's accuracy and mean D(human | greedy response) on valid pairs. There is
no stationary criterion (D moves), so every check counts as an improvement and the run keeps its last weights, as GAN
training does: the criterion is minus the number of steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cldg.data.batching import EncodedPairs, Limits
from cldg.text.tokenizer import PAD
from cldg.training import distributed
from cldg.training.evaluation import mean_nll
from cldg.training.policy_gradient import (PolicyTrainee, discriminator_loss, eval_mode, load_cldg_reference,
                                           policy_logprobs, reinforce_loss, rollout_rewards, sample_responses,
                                           teacher_forcing_loss)
from cldg.training.recipes.mle import MLERecipe
from cldg.training.recipes.mmi import read_split


def padded_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two token batches [B, La], [B, Lb] stacked as [2B, max(La, Lb)], PAD-filled."""
    width = max(a.size(1), b.size(1))
    return torch.cat([F.pad(a, (0, width - a.size(1)), value=PAD), F.pad(b, (0, width - b.size(1)), value=PAD)])


class AdversarialRecipe(MLERecipe):
    checkpoint_is_model = False  # the policy inside the trained pair is what finish saves
    progress_keys = ("reward", "d_acc", "baseline")
    updates_in_loss = True  # sampling, rollouts, the baseline and the discriminator's turn happen inside loss()

    def __init__(self, train, valid, batch_size, seed, device, max_len: int, cfg):
        super().__init__(train, valid, batch_size, seed, device)
        self.max_len, self.cfg = max_len, cfg

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        from cldg.errors import CldgError
        from cldg.models.discriminator import DiscriminatorConfig, HierarchicalDiscriminator
        from cldg.text.tokenizer import DialogueTokenizer

        if distributed.current().enabled:  # a step trains one network: DDP would see the other's weights unused
            raise CldgError("adversarial-train: not under torchrun/DDP (each step trains only one of its two networks)")
        generator = load_cldg_reference(inputs.dirs["reference"], "adversarial-train", device).train()
        rc = inputs.configs["reference"]
        limits = Limits.from_config(rc)
        tok = DialogueTokenizer.load(inputs.prepare / "tokenizer.json")
        discriminator = HierarchicalDiscriminator(generator.vocab_size,
                                                  DiscriminatorConfig(cfg.d_embedding_dim, cfg.d_hidden_size))
        train = EncodedPairs(tok, *read_split(inputs.prepare, "train", cfg.max_train_pairs, seed), limits)
        valid = EncodedPairs(tok, *read_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed), limits)
        max_len = min(cfg.max_len, limits.max_response_len - 1)
        return PolicyTrainee(generator, discriminator), cls(train, valid, cfg.batch_size, seed, device, max_len, cfg)

    def describe(self) -> str:
        c = self.cfg
        return (f"REGS on {len(self.train):,} train pairs: discriminator pretrained {c.d_pretrain_steps} steps, then "
                f"{c.d_steps} D / {c.g_steps} G steps in turn, {c.rollouts} rollouts per prefix, teacher forcing "
                f"weight {c.teacher_forcing_weight}")

    def discriminator_turn(self, step: int) -> bool:
        c = self.cfg
        return step < c.d_pretrain_steps or (step - c.d_pretrain_steps) % (c.d_steps + c.g_steps) < c.d_steps

    def loss(self, model, batch, step: int):
        trainee = distributed.unwrap(model)
        trainee.updates += 1
        generated = sample_responses(trainee.policy, batch, self.max_len)
        if self.discriminator_turn(step):
            return self.discriminator_step(trainee.discriminator, batch, generated)
        return self.generator_step(model, trainee, batch, generated)

    def human_responses(self, batch) -> torch.Tensor:
        """The batch's human responses as D sees them: cut to `max_len` tokens, the sampled responses' limit (D drops
        EOS), so that no human response is longer than any generated one can be."""
        return batch.response_out[:, :self.max_len]

    def discriminator_logits(self, discriminator, batch, generated) -> torch.Tensor:
        """D's logits [2B]: the batch's human responses (cut to `max_len`), then the generated ones."""
        return discriminator(batch.context_turns.repeat(2, 1, 1), padded_pair(self.human_responses(batch), generated))

    def discriminator_step(self, discriminator, batch, generated):
        logits = self.discriminator_logits(discriminator, batch, generated)
        loss, accuracy = discriminator_loss(logits[:batch.size], logits[batch.size:])
        # this step's figures only: D's accuracy and its mean probability of human for the sampled responses (the
        # whole responses' reward), both on this batch before the update
        reward = float(torch.sigmoid(logits[batch.size:].detach().float()).mean())
        return loss, {"d_loss": loss.item(), "d_acc": accuracy, "reward": reward,
                      "tokens": int(generated.ne(PAD).sum())}

    def generator_step(self, model, trainee, batch, generated):
        def human_probability(rows, responses):
            return torch.sigmoid(trainee.discriminator(batch.context_turns.index_select(0, rows), responses))

        with torch.no_grad(), eval_mode(trainee.discriminator):
            rewards = rollout_rewards(trainee.policy, batch, generated, self.cfg.rollouts, self.max_len,
                                      human_probability)
            logits = self.discriminator_logits(trainee.discriminator, batch, generated)
        _, d_acc = discriminator_loss(logits[:batch.size], logits[batch.size:])  # D on this batch, as it stands
        real = generated.ne(PAD)
        advantage = trainee.advantage(rewards, real, self.cfg.baseline_momentum) * real
        pg = reinforce_loss(policy_logprobs(model, batch, generated), advantage)
        # the whole response's reward: D's probability of human, at its last token
        reward = float(rewards.gather(1, (real.sum(1) - 1).clamp_min(0).unsqueeze(1)).mean())
        info = {"reward": reward, "d_acc": d_acc, "pg": pg.item(), "baseline": float(trainee.baseline),
                "tokens": int(real.sum())}
        if not self.cfg.teacher_forcing_weight:
            return pg, info
        # teacher forcing: REINFORCE with reward 1 on the human responses (per sequence, as pg), with dropout
        tf, nll, n = teacher_forcing_loss(model(batch), batch.response_out)
        return pg + self.cfg.teacher_forcing_weight * tf, info | {"nll": nll, "tokens": info["tokens"] + n}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        trainee = distributed.unwrap(model)
        correct, human_prob, n = 0.0, 0.0, 0
        for batch in self.valid.iter_batches(self.batch_size, 0, 0, shuffle=False):
            batch = batch.to(self.device)
            generated = sample_responses(trainee.policy, batch, self.max_len, greedy=True)
            logits = self.discriminator_logits(trainee.discriminator, batch, generated)
            _, accuracy = discriminator_loss(logits[:batch.size], logits[batch.size:])
            correct += accuracy * 2 * batch.size
            human_prob += float(torch.sigmoid(logits[batch.size:]).sum())
            n += batch.size
        nll = mean_nll(model, self.valid, self.batch_size, self.device)
        # no stationary criterion (D moves): each check 'improves', so the last weights are kept (see the docstring)
        return {"criterion": -float(trainee.updates), "nll": nll, "d_acc": correct / max(2 * n, 1),
                "reward": human_prob / max(n, 1)}

    def finish(self, model, summary: dict):
        c = self.cfg
        return model.policy, {"last_valid_reward": summary["last_valid"].get("reward"),
                              "last_valid_d_acc": summary["last_valid"].get("d_acc"),
                              "d_pretrain_steps": c.d_pretrain_steps, "d_steps": c.d_steps, "g_steps": c.g_steps,
                              "rollouts": c.rollouts, "teacher_forcing_weight": c.teacher_forcing_weight}
