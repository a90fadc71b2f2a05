"""Train the MSN matching model (BCE against random negatives) and compare it with BM25 and bag-of-words.

Validation every N steps on 1 true + 9 random responses per valid context: R10@1, R10@2, R10@5, MRR;
the best weights are kept, the learning rate halves when a check does not improve, and a rerun after
a crash or Ctrl-C resumes from the last checkpoint. Writes model.safetensors, model.json,
tokenizer.json (a copy of the prepare stage's) and metrics.json with MSN's, BM25's and bag-of-words'
validation metrics side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.config import CommonOptions, fingerprint_config, option, options_from, options_like
from cldg.errors import CldgError
from cldg.training.options import TrainOptions

SCHEMA = 1
PREPARE_SCHEMA = 1


# MSN validates every N steps (an epoch of a large corpus is long); its gradients are clipped at TrainOptions'
# default, not an option here
TRAIN_DEFAULTS = {"batch_size": (64, "True pairs per step (plus neg_ratio x as many negatives)."), "epochs": 5,
                  "eval_every": (500, "Validate every N steps."), "patience": 4}


@dataclass
class Config(options_like(TrainOptions, omit=("grad_clip", "evals_per_epoch"), **TRAIN_DEFAULTS)):
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)
    hidden: int = option(0, "Model width (0: the word-vector size, no projection).")
    ffn_dim: int = option(0, "Attention block feed-forward size (0: the model width).")
    max_turns: int = option(5, "Context turns the matcher sees (the last ones).")
    max_turn_len: int = option(30, "Tokens per context turn.")
    max_response_len: int = option(0, "Tokens of the response (0: same as --max-turn-len).")
    hops: int = option(3, "Selector hops.")
    gamma: float = option(0.3, "Selector threshold: turns scoring below it are dropped.")
    alpha: float = option(0.5, "Selector weight of word-level vs utterance-level relevance.")
    heads: int = option(4, "Attention heads (slices of the model width).")
    cnn_channels: int = option(16, "Channels of the first CNN layer; the second and third have 2x and 4x.")
    match_dim: int = option(128, "Matching vector size per turn.")
    gru_hidden: int = option(128, "Aggregation GRU size.")
    dropout: float = option(0.1, "Dropout.")
    neg_ratio: int = option(1, "Random negatives per true pair.")
    max_train_pairs: int = option(0, "Use only this many training pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(1000, "Valid contexts used by the periodic checks (0 = all).")
    final_valid_pairs: int = option(0, "Valid contexts of the final MSN / BM25 / BoW comparison (0 = all).")
    score_batch_size: int = option(256, "Pairs per batch when scoring.", fingerprint=False)


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import shutil
    import time

    from cldg.matching.msn import save_msn
    from cldg.matching.training import MatcherTrainConfig, train_msn
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.text.tokenizer import DialogueTokenizer

    check_options(cfg)
    store = ArtifactStore(common.workdir)
    prepared = store.resolve_input("prepare", cfg.prepare_dir, PREPARE_SCHEMA, "--prepare-dir")
    config = fingerprint_config(cfg) | {"seed": common.seed}
    with store.begin("matcher", SCHEMA, config, {"prepare": prepared}, force=common.force) as run:
        if run.existing:
            console.print(f"train-matcher: complete artifact {run.existing.path} found - skipped")
            return run.existing
        set_seed(common.seed)
        device = resolve_device(common.device)
        tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
        model = build_msn(cfg, prepared, tok.vocab_size)
        t0 = time.time()
        data = encode_pairs(cfg, prepared, tok, model, device, common.seed)
        encode_s = time.time() - t0
        n_params = sum(p.numel() for p in model.parameters())
        console.print(f"train-matcher: MSN {n_params / 1e6:.2f}M parameters, {len(data.train_pairs):,} train pairs, "
                      f"{len(data.check_sets):,} validation sets of 10 on {device}")
        summary = train_msn(model, data.train_pairs, data.train_keys, data.valid_pairs, data.check_sets,
                            options_from(MatcherTrainConfig, cfg, seed=common.seed), run.dir, device)
        save_msn(run.dir, model)
        shutil.copyfile(prepared.file("tokenizer.json"), run.dir / "tokenizer.json")
        timings = {"encode_s": round(encode_s, 2), "train_s": summary["train_seconds"]}
        results = final_comparison(data, tok, timings)
        return commit_matcher(run, data, results, timings, summary, n_params, device)


def check_options(cfg: Config) -> None:
    for name in ("batch_size", "neg_ratio", "eval_every", "max_turns", "max_turn_len", "hops", "epochs", "heads",
                 "cnn_channels"):
        if getattr(cfg, name) < 1:
            raise CldgError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.hidden and cfg.hidden % cfg.heads:
        raise CldgError(f"--heads {cfg.heads}: the model width {cfg.hidden} is not divisible by it")


def build_msn(cfg: Config, prepared: Artifact, vocab_size: int):
    """MSN with the prepare artifact's word vectors as its embeddings."""
    from cldg.matching.msn import MSN, MSNConfig
    from cldg.text.vectors import load_word_vectors

    vectors, has = load_word_vectors(prepared.file("word-vectors.safetensors"))
    mcfg = MSNConfig(vocab_size=vocab_size, embed_dim=int(vectors.shape[1]), hidden=cfg.hidden,
                     ffn_dim=cfg.ffn_dim, max_turns=cfg.max_turns, max_turn_len=cfg.max_turn_len,
                     max_response_len=cfg.max_response_len, heads=cfg.heads, hops=cfg.hops, gamma=cfg.gamma,
                     alpha=cfg.alpha, cnn_channels=[cfg.cnn_channels, 2 * cfg.cnn_channels, 4 * cfg.cnn_channels],
                     match_dim=cfg.match_dim, gru_hidden=cfg.gru_hidden, dropout=cfg.dropout)
    return MSN(mcfg, vectors, has)


@dataclass
class MatcherData:
    train: object         # the train and valid pairs (cldg.data.pairs tables)
    valid: object
    matcher: object       # MSNMatcher around the model being trained
    train_pairs: list     # encoded (context turns, response) of the training pairs used
    train_keys: list      # their response texts (a negative never has the true response's text)
    valid_pairs: list
    check_sets: object    # candidate sets (1 true + 9 random) of the periodic checks
    final_sets: object    # and of the final MSN / BM25 / BoW comparison


def encode_pairs(cfg: Config, prepared: Artifact, tok, model, device, seed: int) -> MatcherData:
    import random

    from cldg.data.pairs import read_pairs
    from cldg.matching.evaluation import candidate_sets
    from cldg.matching.msn import MSNMatcher

    train = read_pairs(prepared.file("pairs-train.parquet"))
    valid = read_pairs(prepared.file("pairs-valid.parquet"))
    if len(train) < 2 or len(valid) < 10:
        raise CldgError(f"{prepared.path}: too few pairs for matcher training ({len(train)} train, "
                        f"{len(valid)} valid; need 2 and 10)")
    idx = list(range(len(train)))
    if cfg.max_train_pairs and len(idx) > cfg.max_train_pairs:
        idx = sorted(random.Random(seed).sample(idx, cfg.max_train_pairs))
    matcher = MSNMatcher(model, tok, device, cfg.score_batch_size)
    train_pairs = matcher.encode([train.context[i] for i in idx], [train.response[i] for i in idx])
    train_keys = [train.response[i] for i in idx]
    sets_all = candidate_sets(valid.response, 9, seed)
    check_sets = sets_all[: cfg.max_valid_pairs] if cfg.max_valid_pairs else sets_all
    final_sets = sets_all[: cfg.final_valid_pairs] if cfg.final_valid_pairs else sets_all
    valid_pairs = matcher.encode(valid.context, valid.response)
    return MatcherData(train, valid, matcher, train_pairs, train_keys, valid_pairs, check_sets, final_sets)


def final_comparison(data: MatcherData, tok, timings: dict) -> dict[str, dict[str, float]]:
    """MSN, BM25 and bag-of-words on the same candidate sets; each one's time goes into `timings`."""
    import time

    from cldg.matching.baselines import BagOfWordsMatcher
    from cldg.matching.bm25 import BM25Matcher
    from cldg.progress import make_progress

    msn_ctx, msn_resp = [p[0] for p in data.valid_pairs], [p[1] for p in data.valid_pairs]
    valid = data.valid
    scorers = {
        "msn": (lambda c, r: data.matcher.score_ids(list(zip(c, r))), msn_ctx, msn_resp),
        "bm25": (BM25Matcher(tok.words, data.train.response).score, valid.context, valid.response),
        "bow": (BagOfWordsMatcher(tok.words).score, valid.context, valid.response),
    }
    results = {}
    with make_progress() as progress:
        for name, (score_fn, contexts, responses) in scorers.items():
            t1 = time.time()
            task = progress.add_task(f"valid {name}", total=data.final_sets.size, unit="pairs")
            results[name] = compare_on_sets(score_fn, contexts, responses, data.final_sets, progress, task)
            timings[f"{name}_valid_s"] = round(time.time() - t1, 2)
    return results


def commit_matcher(run, data: MatcherData, results: dict, timings: dict, summary: dict, n_params: int,
                   device) -> Artifact:
    import json

    from cldg.progress import console

    n_sets = int(len(data.final_sets))
    pairs_per_s = data.final_sets.size / max(timings["msn_valid_s"], 1e-9)
    metrics = {"validation": results, "validation_sets": n_sets, "msn_scoring_pairs_per_s": round(pairs_per_s, 1),
               "device": str(device), "parameters": n_params, "train": summary}
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    print_selection_table(results, n_sets)
    console.print(f"train-matcher: {summary['steps']:,} steps in {summary['train_seconds']:.0f} s "
                  f"(best at step {summary['best_step']}), MSN scores {pairs_per_s:,.0f} pairs/s on {device}")
    return run.commit(rows={"train_pairs": len(data.train_pairs), "validation_sets": n_sets,
                            "steps": summary["steps"]},
                      timings=timings, extra={"validation": results})


def compare_on_sets(score_fn, contexts, responses, sets, progress, task, chunk: int = 200) -> dict[str, float]:
    """R10 metrics of `score_fn` on candidate sets, scored `chunk` sets at a time (a progress bar)."""
    import numpy as np

    from cldg.matching.evaluation import candidate_pairs, expected_rank_metrics

    rows = []
    for lo in range(0, len(sets), chunk):
        part = sets[lo:lo + chunk]
        c, r = candidate_pairs(contexts, responses, part)
        rows.append(np.asarray(score_fn(c, r), dtype=np.float64).reshape(len(part), -1))
        progress.update(task, advance=part.size)
    return expected_rank_metrics(np.concatenate(rows))


def print_selection_table(results: dict[str, dict[str, float]], n_sets: int) -> None:
    from rich.table import Table

    from cldg.matching.evaluation import METRICS
    from cldg.progress import console

    table = Table(title=f"Response selection on valid ({n_sets:,} contexts, 1 true + 9 random)")
    table.add_column("matcher")
    for k in METRICS:
        table.add_column(k, justify="right")
    for name, m in results.items():
        table.add_row(name, *(f"{m[k]:.3f}" for k in METRICS))
    console.print(table)
