"""deeprl: Li et al.'s (2016b) deep reinforcement learning for dialogue generation, from the MLE reference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.approaches import register_approach
from cldg.config import option, options_like
from cldg.training.options import TrainOptions

# Ease of answering: Li et al. (2016b) use 8 dull turns and name two ("I don't know what you are talking about", "I have
# no idea"); the other six are ours, dull replies that MLE models give
DULL_RESPONSES = ("i don't know what you are talking about|i have no idea|i don't know|i'm not sure|"
                  "i don't know what you mean|you know what i mean|i know what you mean|you don't know")


def parse_dull(text: str) -> list[str]:
    return [s.strip() for s in text.split("|") if s.strip()]


@dataclass
class DeepRLOptions(options_like(TrainOptions, omit=("eval_every",), lr=1e-4, epochs=1,
                                 batch_size=(32, "Simulated dialogues per batch, each from a train context."))):
    turns: int = option(5, "Simulated turns per dialogue at most (Li et al.: 5).")
    curriculum_steps: int = option(500, "Curriculum (Li et al.): simulations start at 2 turns and get one more every "
                                   "this many steps, up to --turns (0: --turns from the start). The step count is "
                                   "cldg's choice (Li et al. give none).")
    dull_responses: str = option(DULL_RESPONSES, "Ease of answering: the dull responses, separated by '|'.")
    ease_weight: float = option(0.25, "Weight of the ease-of-answering reward (Li et al.: 0.25).")
    flow_weight: float = option(0.25, "Weight of the information-flow reward (Li et al.: 0.25), -log cos of the "
                                "turn and the agent's previous turn, each the mean of its reference word embeddings "
                                "(cldg's choice: Li et al. use the encoder's representations), cos floored at 0.01.")
    coherence_weight: float = option(0.5, "Weight of the semantic-coherence reward (Li et al.: 0.5).")
    backward_model: str = option("", "An mmi artifact directory (cldg mmi-train) whose backward model p(q|a) gives "
                                 "semantic coherence its backward term, made from the reference's prepare artifact "
                                 "(empty: the forward term alone).")
    mle_weight: float = option(1.0, "Weight of the MLE loss on the batch's human responses added to the policy "
                               "gradient, per sequence as it is (summed over tokens, averaged over the batch). cldg's "
                               "addition, not in Li et al.'s objective: it keeps the policy near the MLE model, as Li "
                               "et al. 2017's teacher forcing does; without it a demo-scale policy answered every "
                               "context 'yeah' after 200 steps (0: policy gradient alone, the paper's objective).")
    baseline_momentum: float = option(0.9, "The reward baseline: a running mean of the returns with this momentum "
                                      "(cldg's choice: Li et al. name a baseline, not how it is estimated).")
    max_len: int = option(20, "Tokens per simulated turn at most (cldg's choice; at most the reference's response "
                          "limit).")
    valid_dialogues: int = option(64, "Valid contexts whose greedy simulations give the validation reward.")
    max_train_pairs: int = option(0, "Start simulations from only this many train contexts (seeded; 0 = all).")
    max_valid_pairs: int = option(500, "Validate the NLL on at most this many valid pairs (0 = all).")

    def problems(self) -> list[str]:
        sizes = ("turns", "max_len", "valid_dialogues")
        found = [f"--{name.replace('_', '-')} must be at least 1" for name in sizes if getattr(self, name) < 1]
        found += [f"--{name.replace('_', '-')} must be >= 0" for name in
                  ("curriculum_steps", "ease_weight", "flow_weight", "coherence_weight", "mle_weight")
                  if getattr(self, name) < 0]
        if not 0 <= self.baseline_momentum < 1:
            found.append("--baseline-momentum must be in [0, 1)")
        if not parse_dull(self.dull_responses):
            found.append("--dull-responses: give at least one response ('|' between them)")
        if self.backward_model and not (Path(self.backward_model) / "manifest.json").is_file():
            found.append(f"--backward-model {self.backward_model}: no manifest.json there (expected an mmi artifact "
                         "directory, WORKDIR/mmi/<fingerprint>)")
        return found


@register_approach("deeprl")
class DeepRL:
    """DEEPRL: policy gradient from the MLE reference on simulated two-agent dialogues, rewarded for ease of answering,
    information flow and semantic coherence, with a running-mean baseline and a turn curriculum."""

    options = DeepRLOptions
    recipe = "cldg.training.recipes.deeprl:DeepRLRecipe"
    makes = "deeprl"
    needs = ("reference",)
