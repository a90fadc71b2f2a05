"""MMIRecipe: the backward model p(c|r) of MMI-bidi (Li et al., 2016a), trained by MLE on swapped pairs, or the
language model p(r) of MMI-antiLM, trained by MLE on the responses with an empty context.

The swapped pair of (context, response) has the response as its one-turn context and the context's last turn as
its target; the backward model has the reference's architecture and limits. After the fit, `finish` joins the
reference (forward) and the best backward model into one `mmi` model and tunes lambda and gamma on valid pairs:
the N-best lists and both log-probs are computed once, then every grid point only reranks them.

MMI-antiLM (`objective = "antilm"`): the language model is the reference's architecture given no context (every
model here encodes an empty context: so p(r|nothing) is a language model of responses), trained on the training
responses; `finish` joins it with the reference into an `mmi-antilm` model and tunes lambda and the threshold
gamma the same way (Li et al. tune them on an N-best list too).
"""
from __future__ import annotations

import torch

from cldg.approaches.mmi import parse_grid, parse_thresholds
from cldg.data.batching import EncodedPairs, Limits, collate
from cldg.training.recipes.mle import MLERecipe


def read_split(prepare_dir, split: str, max_pairs: int, seed: int):
    """(contexts, responses) of a split, a seeded subset of at most max_pairs (0 = all), in split order."""
    import random
    from pathlib import Path

    from cldg.data.pairs import read_pairs

    t = read_pairs(Path(prepare_dir) / f"pairs-{split}.parquet")
    idx = list(range(len(t)))
    if max_pairs and len(idx) > max_pairs:
        idx = sorted(random.Random(seed).sample(idx, max_pairs))
    return [list(t.context[i]) for i in idx], [t.response[i] for i in idx]


def swapped(tok, contexts, responses, limits: Limits) -> EncodedPairs:
    """The backward model's pairs: ([response], last context turn)."""
    return EncodedPairs(tok, [[r] for r in responses], [c[-1] if c else "" for c in contexts], limits)


def response_lm(tok, contexts, responses, limits: Limits) -> EncodedPairs:
    """The language model's pairs: (no context, response)."""
    return EncodedPairs(tok, [[] for _ in responses], responses, limits)


class MMIRecipe(MLERecipe):
    checkpoint_is_model = False  # the backward model is trained; finish joins it to the forward one

    def __init__(self, train, valid, batch_size, seed, device, forward, tok, limits, tune, cfg):
        super().__init__(train, valid, batch_size, seed, device)
        self.forward, self.tok, self.limits, self.tune, self.cfg = forward, tok, limits, tune, cfg

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        from cldg.models import build_model, load_model
        from cldg.text.tokenizer import DialogueTokenizer
        from cldg.text.vectors import load_word_vectors

        rc = inputs.configs["reference"]
        limits = Limits.from_config(rc)
        tok = DialogueTokenizer.load(inputs.prepare / "tokenizer.json")
        forward = load_model(inputs.dirs["reference"], device)
        pairs = response_lm if cfg.objective == "antilm" else swapped
        train = pairs(tok, *read_split(inputs.prepare, "train", cfg.max_train_pairs, seed), limits)
        valid_pairs = read_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed)
        backward = build_model(forward.name, forward.vocab_size, **forward.config_dict())
        vectors, has_vector = load_word_vectors(inputs.prepare / "word-vectors.safetensors")
        backward.init_embeddings(vectors, has_vector, seed)
        tune = (valid_pairs[0][:cfg.tune_pairs], valid_pairs[1][:cfg.tune_pairs])
        recipe = cls(train, pairs(tok, *valid_pairs, limits), cfg.batch_size, seed, device, forward, tok, limits,
                     tune, cfg)
        return backward, recipe

    def describe(self) -> str:
        if self.cfg.objective == "antilm":
            return (f"language model {self.forward.name} p(r) on {len(self.train):,} train / {len(self.valid):,} "
                    f"valid responses; N-best {self.cfg.nbest}, lambda and the threshold gamma tuned on "
                    f"{len(self.tune[0]):,} valid pairs")
        return (f"backward {self.forward.name} p(c|r) on {len(self.train):,} swapped train / {len(self.valid):,} "
                f"valid pairs; N-best {self.cfg.nbest}, lambda and gamma tuned on {len(self.tune[0]):,} valid pairs")

    def finish(self, backward, summary: dict):
        if self.cfg.objective == "antilm":
            return self.finish_antilm(backward, summary)
        model = self.joined(backward)
        lam, gamma, grid = self.tuned(model)
        model.lam = model.config.lam = lam
        model.gamma = model.config.gamma = gamma
        return model, {"lambda": lam, "gamma": gamma, "nbest": model.nbest, "tuning_pairs": len(self.tune[0]),
                       "tuning_grid": grid, "best_valid_backward_nll": summary["best_criterion"]}

    def joined(self, backward):
        """The `mmi` model: the reference as the forward model, `backward` as the backward one."""
        from cldg.models import build_model

        l = self.limits
        model = build_model("mmi", self.forward.vocab_size, nbest=self.cfg.nbest, max_turn_len=l.max_turn_len,
                            max_response_len=l.max_response_len,
                            forward={"name": self.forward.name, "config": self.forward.config_dict()},
                            backward={"name": backward.name, "config": backward.config_dict()})
        model.forward_model.load_state_dict(self.forward.state_dict())
        model.backward_model.load_state_dict(backward.state_dict())
        return model.to(self.device).eval()

    def finish_antilm(self, lm, summary: dict):
        """The `mmi-antilm` model (the reference and the best language model), lambda and gamma tuned."""
        from cldg.models import build_model

        model = build_model("mmi-antilm", self.forward.vocab_size, nbest=self.cfg.nbest,
                            max_response_len=self.limits.max_response_len,
                            forward={"name": self.forward.name, "config": self.forward.config_dict()},
                            lm={"name": lm.name, "config": lm.config_dict()})
        model.forward_model.load_state_dict(self.forward.state_dict())
        model.lm_model.load_state_dict(lm.state_dict())
        model = model.to(self.device).eval()
        lam, threshold, grid = self.tuned(model)
        model.lam = model.config.lam = lam
        model.threshold = model.config.threshold = threshold
        return model, {"objective": "antilm", "lambda": lam, "gamma": threshold, "nbest": model.nbest,
                       "tuning_pairs": len(self.tune[0]), "tuning_grid": grid,
                       "best_valid_lm_nll": summary["best_criterion"]}

    @torch.inference_mode()
    def tuned(self, model, batch_size: int = 32):
        """(lambda, gamma, grid) on the tuning pairs, with the decoding defaults of `evaluate` (max length etc.)."""
        from cldg.decoding.options import DecodingOptions
        from cldg.decoding.rerank import nbest_lists, tune_antilm, tune_weights

        antilm = self.cfg.objective == "antilm"
        thresholds = parse_thresholds(self.cfg.thresholds)
        dcfg = DecodingOptions().decode_config()
        contexts, references = self.tune
        fwd, bwd, cands = [], [], []
        for start in range(0, len(contexts), batch_size):
            batch = collate(self.tok, contexts[start:start + batch_size], None, self.limits).to(self.device)
            lists = nbest_lists(model, batch, dcfg)
            index = torch.tensor([b for b, c in enumerate(lists) for _ in c], dtype=torch.long, device=self.device)
            flat = [c for cs in lists for c in cs]
            if antilm:  # log U_gamma for every gamma of the grid, not only the model's
                f, b = model.forward_logprobs(batch, index, flat), model.lm_prefix_logprobs(flat, thresholds)
            else:
                f, b = model.rerank_scores(batch, index, flat)
            sizes = [len(c) for c in lists]
            fwd += [t.cpu() for t in f.split(sizes)]
            bwd += [t.cpu() for t in b.split(sizes)]
            cands += [[self.tok.decode_tokens(c) for c in cs] for cs in lists]
        refs = [self.tok.words(r) for r in references]
        if antilm:
            return tune_antilm(fwd, bwd, cands, refs, parse_grid(self.cfg.lambdas), thresholds)
        return tune_weights(fwd, bwd, cands, refs, parse_grid(self.cfg.lambdas), parse_grid(self.cfg.gammas))
