"""hf: models (cldg/models/hf.py): group-wise contrastive fine-tuning against MLE fine-tuning, and generate()
with and without the KV cache, on a GPT-2-small-sized randomly initialised model, on the CPU.

    .venv/bin/python bench/bench_hf.py [--small] [--groups 2] [--k 3] [--steps 2] [--repeats 3] [--threads 1]

The model is GPT2Config(n_layer=12, n_embd=768, n_head=12) (--small: 2 layers, 128-d, a quick run), random,
with a word-level tokenizer trained here on the fixture dialogues (tests/fixtures_data.py), both saved into a
temporary directory and loaded through `load_hf_model("hf:DIR")`, offline. Its vocabulary is the fixture's
(a few hundred words), so the LM head costs little next to GPT-2's 50,257; --vocab-size pads it.

1. Training. Pairs are the fixture's turns (context: up to 3 turns before). Groups are built as
   bench_contrastive.py builds them: a samples table with k random positives and k random negatives on the
   response side and on the context side of every pair (matching scores at random: s+ in [0.5, 1], s- =
   prob - 1 with prob in [0, 0.3]), `build_groups` and `make_group_batch` from cldg.training.groups, so a batch
   is the distinct sequences of --groups groups (the pair, 2k positives, 2k negatives), scored in one forward.
   Two copies of the model, from the same weights, take the same batches:
     mle           the NLL of every flat sequence's response given its context (mean over response tokens),
     contrastive   D = log p_target(r|c) - log p_ref(r|c), the reference's log-probs read from a reference
                   cache computed once before timing (the model's `score` on every distinct sequence of the
                   groups, in eval mode, as cldg's reference cache does), and the paper's eq4 loss
                   (cldg.training.losses.contrastive_loss) on the [G, P] / [G, N] slots.
   Each step is batch building (tokenising through the model's make_batch), forward, backward, gradient
   clipping and Adam. Tokens/s counts response tokens (and, separately, every input token); both modes see
   the same tokens, so their ratio is the ratio of step times. Every repeat runs --steps steps of each mode,
   the order of the two modes swapped from one repeat to the next, after --warmup untimed steps of each; the
   figures are the medians over repeats. Target: contrastive >= 0.85x MLE.
2. Generation. `generate_ids` (transformers `generate`, greedy, --max-new-tokens as min and max length) on the same
   --gen-contexts contexts with use_cache=True and use_cache=False, alternating over --repeats; responses/s
   (median) and whether the two give the same token ids.
On the CPU the clock is the process's CPU time (--threads torch threads, 1 by default), since wall time on a
shared machine mostly measures the neighbours; wall time is reported too. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def fixture_pairs(n_dialogues: int, max_context_turns: int = 3):
    """(contexts, responses) by pair id from the fixture corpus: every turn after the first is a response."""
    from fixtures_data import make_dialogues

    contexts, responses = {}, {}
    for d in make_dialogues(n_dialogues):
        turns = d["turns"]
        for i in range(1, len(turns)):
            pid = len(responses)
            contexts[pid], responses[pid] = turns[max(0, i - max_context_turns):i], turns[i]
    return contexts, responses


def build_model_dir(path: Path, texts: list[str], small: bool, vocab_size: int | None, seed: int = 0) -> dict:
    """A word-level tokenizer trained on `texts` (as tests/test_hf_models.py builds it) and a random GPT-2."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    size = {"n_layer": 2, "n_embd": 128, "n_head": 2} if small else {"n_layer": 12, "n_embd": 768, "n_head": 12}
    vocab = max(len(tok), vocab_size or 0)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, **size)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {**size, "vocab_size": vocab, "tokenizer_vocab": len(tok),
            "parameters": sum(p.numel() for p in model.parameters())}


def samples_table(n_pairs: int, k: int, seed: int = 0) -> dict[str, list]:
    """The long-format samples table with random candidates, as bench_contrastive.py makes it."""
    rng = random.Random(seed)
    cols = {c: [] for c in ("split", "pair_id", "side", "polarity", "rank", "cand_pair_id", "matcher_prob", "weight")}
    for pid in range(n_pairs):
        for side in ("response", "context"):
            cands = rng.sample([i for i in range(min(n_pairs, 400)) if i != pid], 2 * k)
            for pol, ids in (("pos", cands[:k]), ("neg", cands[k:])):
                for rank, cand in enumerate(ids):
                    prob = rng.uniform(0.5, 1.0) if pol == "pos" else rng.uniform(0.0, 0.3)
                    for c, v in zip(cols, ("train", pid, side, pol, rank, cand, prob,
                                           prob if pol == "pos" else prob - 1.0)):
                        cols[c].append(v)
    return cols


class HFText:
    """What make_group_batch needs of a TextIndex (`batch(seqs)`), over an hf: model's own tokenizer."""

    def __init__(self, model, contexts, responses):
        self.model, self.contexts, self.responses = model, contexts, responses

    def batch(self, seqs):
        return self.model.make_batch([self.contexts[c] for c, _ in seqs], [self.responses[r] for _, r in seqs])


def median(xs):
    return round(statistics.median(xs), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a 2-layer, 128-d GPT-2 (a quick run) instead of GPT-2 small")
    ap.add_argument("--vocab-size", type=int, default=0, help="pad the vocabulary to this size (GPT-2's: 50257)")
    ap.add_argument("--dialogues", type=int, default=100, help="fixture dialogues (tests/fixtures_data.py)")
    ap.add_argument("--groups", type=int, default=2, help="groups per batch")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps of each mode per repeat")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each mode before the first repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-contexts", type=int, default=8, help="contexts generated for, in one batch")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--cache-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU time is what is compared)")
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()

    import torch

    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import HFDialogueModel, load_hf_model
    from cldg.training.groups import GroupOptions, build_groups, make_group_batch
    from cldg.training.losses import contrastive_loss

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    contexts, responses = fixture_pairs(args.dialogues)
    texts = sorted({t for c in contexts.values() for t in c} | set(responses.values()))
    groups = build_groups(samples_table(len(responses), args.k), "train", GroupOptions(args.k))

    with tempfile.TemporaryDirectory(prefix="bench_hf_") as tmp:
        info = build_model_dir(Path(tmp), texts, args.small, args.vocab_size)
        models = {m: load_hf_model(f"hf:{tmp}", device) for m in ("mle", "contrastive")}
        model = models["contrastive"]  # the reference: the targets start from its weights

    order = list(range(len(groups)))
    random.Random(1).shuffle(order)
    n_batches = args.warmup + args.steps * args.repeats
    batch_rows = [order[(i * args.groups) % len(order):][:args.groups] for i in range(n_batches)]
    used = sorted(set().union(*(_rows_sequences(groups, rows) for rows in batch_rows)))

    # the reference cache: one eval-mode pass over every distinct sequence the timed batches use
    c0, w0 = time.process_time(), time.perf_counter()
    ref_logp = dict(zip(used, model.score([contexts[c] for c, _ in used], [responses[r] for _, r in used],
                                          args.cache_batch_size)))
    cache = {"sequences": len(used), "cpu_s": round(time.process_time() - c0, 2),
             "wall_s": round(time.perf_counter() - w0, 2)}

    optims = {}
    for m, mdl in models.items():
        mdl.train()
        optims[m] = torch.optim.Adam(mdl.parameters(), lr=1e-5)

    def step(mode: str, rows: list[int]) -> tuple[int, int]:
        mdl, opt = models[mode], optims[mode]
        gb = make_group_batch(groups, rows, HFText(mdl, contexts, responses), ref_logp)
        out = mdl.response_output(gb.seqs)
        tok_logp = out.token_logprobs()                       # [S, T], 0 at padding
        if mode == "mle":
            loss = -tok_logp.sum() / out.mask.sum().clamp_min(1)
        else:
            d = tok_logp.sum(-1) - gb.ref_logp
            loss = contrastive_loss(d[gb.pos_index], d[gb.neg_index], gb.s_pos, gb.s_neg, gb.pos_mask, gb.neg_mask,
                                    "eq4")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mdl.parameters(), 1.0)
        opt.step()
        loss.item()
        return gb.seqs.tokens, int(gb.seqs.attention_mask.sum())

    modes = ("mle", "contrastive")
    for i in range(args.warmup):
        for mode in modes:
            step(mode, batch_rows[i])
    per_repeat = {m: [] for m in modes}
    for r in range(args.repeats):
        rows_r = batch_rows[args.warmup + r * args.steps:][:args.steps]
        for mode in (modes if r % 2 == 0 else modes[::-1]):  # swap the order: contention hits both alike
            cpu = wall = 0.0
            resp_tok = in_tok = 0
            for rows in rows_r:
                c0, w0 = time.process_time(), time.perf_counter()
                n_resp, n_in = step(mode, rows)
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                resp_tok += n_resp
                in_tok += n_in
            per_repeat[mode].append({"cpu_s": cpu, "wall_s": wall, "response_tokens": resp_tok, "input_tokens": in_tok})

    def summary(runs):
        return {"response_tokens_per_s": median([x["response_tokens"] / x["cpu_s"] for x in runs]),
                "input_tokens_per_s": median([x["input_tokens"] / x["cpu_s"] for x in runs]),
                "wall_response_tokens_per_s": median([x["response_tokens"] / x["wall_s"] for x in runs]),
                "cpu_s_per_step": median([x["cpu_s"] / args.steps for x in runs]),
                "wall_s_per_step": median([x["wall_s"] / args.steps for x in runs]),
                "response_tokens_per_step": runs[0]["response_tokens"] / args.steps,
                "per_repeat_response_tokens_per_s": [round(x["response_tokens"] / x["cpu_s"], 1) for x in runs]}

    training = {m: summary(per_repeat[m]) for m in modes}
    ratios = [c["response_tokens"] / c["cpu_s"] / (m["response_tokens"] / m["cpu_s"])
              for m, c in zip(per_repeat["mle"], per_repeat["contrastive"])]
    wall_ratios = [c["response_tokens"] / c["wall_s"] / (m["response_tokens"] / m["wall_s"])
                   for m, c in zip(per_repeat["mle"], per_repeat["contrastive"])]
    seqs_per_step = len(make_group_batch(groups, batch_rows[0], HFText(model, contexts, responses), ref_logp).ref_logp)

    result = {
        "device": "cpu", "clock": "process CPU time", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": "shared with other processes (load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end); CPU time, not wall time, is compared",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "model": {"arch": "GPT2LMHeadModel, random init", "preset": "small (--small)" if args.small else "gpt2-small",
                  **info},
        "training": {"k": args.k, "groups_per_batch": args.groups, "sequences_in_first_batch": seqs_per_step,
                     "steps_per_repeat": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup,
                     "reference_cache": cache, **training,
                     "contrastive_vs_mle": median(ratios), "contrastive_vs_mle_per_repeat": [round(x, 3) for x in ratios],
                     "contrastive_vs_mle_wall": median(wall_ratios), "target": ">= 0.85"},
    }

    if not args.skip_generation:
        gen_pids = list(range(0, len(contexts), max(1, len(contexts) // args.gen_contexts)))[:args.gen_contexts]
        gen_contexts = [contexts[p] for p in gen_pids]
        # min length = max length: a random model with tied embeddings tends to repeat the prompt's last token (EOS)
        # and stop at once; forcing full-length responses makes both settings decode max_new_tokens steps
        cfg = DecodeConfig(method="greedy", max_len=args.max_new_tokens, min_len=args.max_new_tokens)
        gen_model = models["mle"].eval()

        def generate(use_cache: bool) -> list[list[int]]:
            gen_model.generation_kwargs = lambda c: {**HFDialogueModel.generation_kwargs(gen_model, c),
                                                      "use_cache": use_cache}
            try:
                return gen_model.generate_ids(gen_contexts, cfg)
            finally:
                del gen_model.generation_kwargs

        outputs, times = {}, {True: [], False: []}
        generate(True)  # warm-up
        for r in range(args.repeats):
            for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
                c0, w0 = time.process_time(), time.perf_counter()
                ids = generate(use_cache)
                times[use_cache].append((time.process_time() - c0, time.perf_counter() - w0))
                outputs.setdefault(use_cache, ids)
                assert outputs[use_cache] == ids, "greedy generation is not deterministic"
        n = len(gen_contexts)
        gen = {}
        for use_cache, name in ((True, "kv_cache"), (False, "no_cache")):
            gen[name] = {"responses_per_s": median([n / c for c, _ in times[use_cache]]),
                         "generated_tokens_per_s": median([sum(len(x) for x in outputs[use_cache]) / c
                                                           for c, _ in times[use_cache]]),
                         "wall_responses_per_s": median([n / w for _, w in times[use_cache]]),
                         "cpu_s_per_batch": median([c for c, _ in times[use_cache]])}
        same = outputs[True] == outputs[False]
        result["generation"] = {
            "contexts": n, "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": args.max_new_tokens,
            "mean_generated_tokens": round(sum(len(x) for x in outputs[True]) / n, 1),
            "mean_prompt_tokens": round(sum(len(gen_model.encode_context(c)) for c in gen_contexts) / n, 1),
            **gen, "kv_cache_speedup": round(gen["kv_cache"]["responses_per_s"] / gen["no_cache"]["responses_per_s"], 2),
            "outputs_equal": same,
            "rows_differing": sum(a != b for a, b in zip(outputs[True], outputs[False])),
        }
    print(json.dumps(result, indent=2))


def _rows_sequences(groups, rows) -> set[tuple[int, int]]:
    """The (context id, response id) of every real slot of groups[rows]."""
    out = set()
    for c, r in ((groups.pos_ctx[rows], groups.pos_resp[rows]), (groups.neg_ctx[rows], groups.neg_resp[rows])):
        m = c >= 0
        out.update(zip(c[m].tolist(), r[m].tolist()))
    return out


if __name__ == "__main__":
    main()
