"""DeepRLRecipe: Li et al.'s (2016b) policy gradient on simulated dialogues, starting from the MLE reference.

Each step takes a batch of train contexts and lets the policy talk to itself: turn k is sampled given the dialogue
so far (the context, then the turns simulated before it, cut to the reference's limits), and scored by frozen
models (the MLE reference, and the backward model of an mmi artifact when one is given):

    ease of answering   r1 = -1/|S| sum_{s in S} log p_ref(s | a) / |s|          (S: the dull responses)
    information flow    r2 = -log cos(e(a), e(p))    p: the same agent's previous turn, e: mean reference embedding
    semantic coherence  r3 = log p_ref(a | dialogue) / |a| + log p_backward(q | a) / |q|    q: the turn a answers
    reward              r  = 0.25 r1 + 0.25 r2 + 0.5 r3

A dialogue's return is the sum of its turns' rewards (Li et al.'s eq. 7), here divided by the number of turns (the
mean: a scale, so that the running-mean baseline stays comparable as the curriculum adds turns); every turn's
log-probability (the policy in eval mode, as it samples) is weighted by return - baseline, and `mle_weight` times the
MLE loss on the batch's human responses is added (cldg's addition, not Li et al.'s objective: an anchor to the MLE
model, as Li et al. 2017's teacher forcing; with dropout), per sequence as the policy-gradient term is
(`policy_gradient.teacher_forcing_loss`: summed over each response's tokens, averaged over the batch). Rewards are
scored in float32 (autocast off). --backward-model must be an mmi artifact made from the reference's prepare
artifact; the reference must be a cldg dialogue model (not hf:).
Validation: the mean reward per turn of greedy simulations from fixed valid contexts (frozen scorers: a stationary
criterion, higher is better) and the valid NLL.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cldg.approaches.deeprl import parse_dull
from cldg.data.batching import EncodedPairs, Limits, collate_ids, context_from_ids
from cldg.text.tokenizer import EOS, PAD
from cldg.training import distributed
from cldg.training.evaluation import mean_nll
from cldg.training.losses import sequence_logprob
from cldg.training.policy_gradient import (PolicyTrainee, float32_scoring, load_cldg_reference, policy_logprobs,
                                           reinforce_loss, sample_responses, teacher_forcing_loss, with_responses)
from cldg.training.recipes.mle import MLERecipe
from cldg.training.recipes.mmi import read_split

COS_FLOOR = 1e-2  # -log cos is unbounded as cos -> 0 (or below): the information-flow reward stops at -log 0.01


def response_ids(tokens: torch.Tensor) -> list[list[int]]:
    """Rows of sampled tokens [B, L] as turns: the tokens before EOS."""
    return [[t for t in row if t not in (EOS, PAD)] for row in tokens.tolist()]


def _manifest(directory) -> dict:
    try:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def check_backward_artifact(path, reference_dir, prepare_dir) -> None:
    """--backward-model must be a complete mmi artifact made from the reference's prepare artifact (the same
    tokenizer and pairs): its manifest.json says so (stage, inputs.prepare.fingerprint). One CldgError line if not."""
    from cldg.errors import CldgError

    manifest = _manifest(path)
    if not manifest:
        raise CldgError(f"--backward-model {path}: no readable manifest.json (expected an mmi artifact directory, "
                        "WORKDIR/mmi/<fingerprint>)")
    if manifest.get("stage") != "mmi":
        raise CldgError(f"--backward-model {path}: a {manifest.get('stage')!r} artifact, not an mmi one "
                        "(cldg mmi-train)")
    made_from = ((manifest.get("inputs") or {}).get("prepare") or {}).get("fingerprint")
    ref_inputs = _manifest(reference_dir).get("inputs") or {}
    wanted = (ref_inputs.get("prepare") or {}).get("fingerprint") or _manifest(prepare_dir).get("fingerprint")
    if not made_from or made_from != wanted:
        raise CldgError(f"--backward-model {path}: made from prepare artifact {str(made_from)[:12]}, the reference "
                        f"from {str(wanted)[:12]}: pass an mmi artifact trained on the reference's prepare artifact")


def load_backward(path, vocab_size: int, device):
    """The backward model p(q|a) of an mmi artifact (or a model trained on swapped pairs), frozen."""
    from cldg.errors import CldgError
    from cldg.models import load_model

    model = load_model(path, device)
    if callable(getattr(model, "rerank_scores", None)) and not hasattr(model, "backward_model"):
        raise CldgError(f"--backward-model {path}: a {model.name} model has no backward model p(c|r); pass an "
                        "MMI-bidi artifact (cldg mmi-train)")
    model = getattr(model, "backward_model", model)
    if model.vocab_size != vocab_size:
        raise CldgError(f"--backward-model {path}: vocabulary of {model.vocab_size} words, the reference's is "
                        f"{vocab_size}: pass an mmi artifact trained on the same prepare artifact")
    return model.requires_grad_(False).eval()


class DeepRLRecipe(MLERecipe):
    checkpoint_is_model = False  # the policy inside the trained wrapper is what finish saves
    progress_keys = ("reward", "ease", "flow", "coherence", "turns")
    updates_in_loss = True  # sampled dialogues (the RNG) and the baseline move inside loss()

    def __init__(self, train, valid, batch_size, seed, device, reference, backward, dull, limits, cfg):
        super().__init__(train, valid, batch_size, seed, device)
        self.reference, self.backward, self.dull, self.limits, self.cfg = reference, backward, dull, limits, cfg
        self.valid_contexts = [valid.contexts[i] for i in range(min(cfg.valid_dialogues, len(valid)))]

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        from cldg.errors import CldgError
        from cldg.models import load_model
        from cldg.text.tokenizer import DialogueTokenizer

        if distributed.current().enabled:  # a step runs the policy once per simulated turn before one backward
            raise CldgError("deeprl-train: not under torchrun/DDP (a step runs several forward passes of the policy "
                            "before its backward)")
        # the frozen scorer; the policy starts there
        reference = load_cldg_reference(inputs.dirs["reference"], "deeprl-train", device).requires_grad_(False)
        policy = load_model(inputs.dirs["reference"], device).train()
        rc = inputs.configs["reference"]
        limits = Limits.from_config(rc)
        tok = DialogueTokenizer.load(inputs.prepare / "tokenizer.json")
        backward = None
        if cfg.backward_model:
            check_backward_artifact(cfg.backward_model, inputs.dirs["reference"], inputs.prepare)
            backward = load_backward(cfg.backward_model, reference.vocab_size, device)
        train = EncodedPairs(tok, *read_split(inputs.prepare, "train", cfg.max_train_pairs, seed), limits)
        valid = EncodedPairs(tok, *read_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed), limits)
        dull = [ids[:limits.max_response_len - 1] for ids in tok.encode_batch(parse_dull(cfg.dull_responses))]
        return PolicyTrainee(policy), cls(train, valid, cfg.batch_size, seed, device, reference, backward, dull,
                                          limits, cfg)

    def describe(self) -> str:
        coherence = "forward + backward" if self.backward is not None else "forward only (no --backward-model)"
        return (f"policy gradient on simulated dialogues of up to {self.cfg.turns} turns from {len(self.train):,} "
                f"train contexts, {len(self.dull)} dull responses, semantic coherence {coherence}, "
                f"MLE weight {self.cfg.mle_weight}")

    def turns_at(self, step: int) -> int:
        """The curriculum: 2 simulated turns, one more every `curriculum_steps` steps, up to `turns`."""
        if not self.cfg.curriculum_steps:
            return self.cfg.turns
        return min(self.cfg.turns, 2 + step // self.cfg.curriculum_steps)

    def loss(self, model, batch, step: int):
        trainee = distributed.unwrap(model)
        turns = self.simulate(trainee.policy, batch, self.turns_at(step), greedy=False)
        # [B]: the dialogue's turn rewards summed (Li et al.'s eq. 7), over the turns: the baseline stays comparable
        # when the curriculum lengthens the dialogues
        returns = sum(r["reward"] for _, _, r in turns) / len(turns)
        advantage = trainee.advantage(returns, momentum=self.cfg.baseline_momentum)
        # every turn's log-probability (eval mode, as sampled) weighted by the dialogue's advantage; the mean over
        # turns keeps the scale
        pg = sum(reinforce_loss(policy_logprobs(model, ctx, tokens), advantage) for ctx, tokens, _ in turns)
        pg = pg / len(turns)
        info = {name: torch.stack([r[name] for _, _, r in turns]).mean().item()
                for name in ("reward", "ease", "flow", "coherence")}
        info |= {"pg": pg.item(), "baseline": float(trainee.baseline), "turns": len(turns),
                 "tokens": sum(int(tokens.ne(PAD).sum()) for _, tokens, _ in turns)}
        if not self.cfg.mle_weight:
            return pg, info
        # MLE on the human responses, per sequence as pg (REINFORCE with reward 1), with dropout
        tf, nll, n = teacher_forcing_loss(model(batch), batch.response_out)
        return pg + self.cfg.mle_weight * tf, info | {"nll": nll, "tokens": info["tokens"] + n}

    @torch.no_grad()
    def simulate(self, policy, batch, n_turns: int, greedy: bool):
        """[(context batch, sampled turn [B, L], rewards {name: [B]})] for turns 1..n_turns of each dialogue."""
        slots = [[[w for w in turn if w != PAD] for turn in row] for row in batch.context_turns.tolist()]
        histories = [[turn for turn in row if turn] for row in slots]  # each context's turns, oldest first
        out = []
        for _ in range(n_turns):
            ctx = collate_ids([context_from_ids(h, self.limits) for h in histories], None, self.limits).to(self.device)
            tokens = sample_responses(policy, ctx, min(self.cfg.max_len, self.limits.max_response_len - 1), greedy)
            answers = response_ids(tokens)
            out.append((ctx, tokens, self.rewards(ctx, tokens, answers, histories)))
            histories = [h + [a] for h, a in zip(histories, answers)]
        return out

    def rewards(self, ctx, tokens, answers, histories) -> dict[str, torch.Tensor]:
        """The three rewards of each sampled turn a (`answers`, [B] each) and their weighted sum, in float32 (the
        Trainer's bf16 autocast off)."""
        with float32_scoring(self.device):
            return self._rewards(ctx, tokens, answers, histories)

    def _rewards(self, ctx, tokens, answers, histories) -> dict[str, torch.Tensor]:
        lim, B = self.limits, len(answers)
        alone = [context_from_ids([a], lim) for a in answers]  # a as a one-turn context
        # ease of answering: the mean length-normalised log-likelihood of the dull responses given a, negated
        dull = collate_ids([c for c in alone for _ in self.dull], [s for _ in alone for s in self.dull], lim)
        ease = -self.normalised_logprob(self.reference, dull.to(self.device)).view(B, len(self.dull)).mean(1)
        # information flow: the same agent's previous turn is two turns back (none at the start of a short context)
        emb = self.reference.embedding.weight
        flow = torch.zeros(B, device=self.device)
        for b, h in enumerate(histories):
            if len(h) >= 2 and h[-2] and answers[b]:
                cos = F.cosine_similarity(emb[answers[b]].mean(0), emb[h[-2]].mean(0), dim=0)
                flow[b] = -torch.log(cos.clamp_min(COS_FLOOR))
        # semantic coherence: log p(a | dialogue) / |a| (+ log p_backward(q | a) / |q|, q the turn a answers)
        coherence = self.normalised_logprob(self.reference, with_responses(ctx, tokens))
        if self.backward is not None:
            swapped = collate_ids(alone, [h[-1] if h else [] for h in histories], lim).to(self.device)
            coherence = coherence + self.normalised_logprob(self.backward, swapped)
        c = self.cfg
        reward = c.ease_weight * ease + c.flow_weight * flow + c.coherence_weight * coherence
        return {"reward": reward, "ease": ease, "flow": flow, "coherence": coherence}

    @staticmethod
    def normalised_logprob(model, batch) -> torch.Tensor:
        """log p(response_out | context) / its tokens (EOS included), per row."""
        n = batch.response_out.ne(PAD).sum(1).clamp_min(1)
        return sequence_logprob(model(batch).float(), batch.response_out, PAD) / n

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        policy = distributed.unwrap(model).policy
        sums, n = {}, 0
        for start in range(0, len(self.valid_contexts), self.batch_size):
            part = self.valid_contexts[start:start + self.batch_size]
            batch = collate_ids(part, None, self.limits).to(self.device)
            for _, _, r in self.simulate(policy, batch, self.cfg.turns, greedy=True):
                for name, value in r.items():
                    sums[name] = sums.get(name, 0.0) + float(value.sum())
                n += batch.size
        means = {name: total / max(n, 1) for name, total in sums.items()}
        nll = mean_nll(model, self.valid, self.batch_size, self.device)
        return {"criterion": -means["reward"], **means, "nll": nll}

    def finish(self, model, summary: dict):
        c = self.cfg
        return model.policy, {
            "best_valid_reward_per_turn": -summary["best_criterion"], "reward_weights": {
                "ease": c.ease_weight, "flow": c.flow_weight, "coherence": c.coherence_weight},
            "dull_responses": parse_dull(c.dull_responses),
            "backward_model": str(Path(c.backward_model).resolve()) if c.backward_model else None,
            "coherence": "forward + backward" if self.backward is not None else "forward only",
            "turns": c.turns, "curriculum_steps": c.curriculum_steps, "mle_weight": c.mle_weight}
