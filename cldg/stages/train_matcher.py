"""Train the MSN matching model (BCE against random negatives) and compare it with BM25 and bag-of-words.

Validation every N steps on 1 true + 9 random responses per valid context: R10@1, R10@2, R10@5 and
MRR; the best checkpoint is kept, the learning rate halves when a check does not improve, and a rerun
after a crash or Ctrl-C resumes (the shared trainer). The manifest holds MSN's, BM25's and
bag-of-words' validation metrics side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.config import CommonOptions, fingerprint_config, option

SCHEMA = 1
PREPARE_SCHEMA = 1


@dataclass
class Config:
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)
    hidden: int = option(128, "Attentive-module width.")
    hops: int = option(3, "Selector hops.")
    gamma: float = option(0.3, "Selector threshold.")
    heads: int = option(4, "Attention heads.")
    cnn_channels: int = option(16, "CNN channels.")
    gru_hidden: int = option(128, "Aggregation GRU size.")
    dropout: float = option(0.1, "Dropout.")
    max_turns: int = option(5, "Context turns the matcher sees.")
    max_turn_len: int = option(40, "Tokens per turn.")
    max_response_len: int = option(40, "Tokens of the response.")
    neg_ratio: int = option(1, "Random negatives per positive.")
    lr: float = option(1e-3, "Adam learning rate.")
    batch_size: int = option(64, "Positive pairs per batch.")
    epochs: int = option(5, "Epochs at most.")
    max_steps: int = option(0, "Steps at most (0: no limit).")
    eval_every: int = option(500, "Validate every N steps.")
    patience: int = option(5, "Checks without improvement before stopping.")
    max_train_pairs: int = option(0, "Use only this many training pairs (0 = all).")
    max_valid_pairs: int = option(1000, "Validation contexts (each with 9 negatives).")


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import json
    import random

    import torch
    import torch.nn.functional as F

    from cldg.data.pairs import read_pairs
    from cldg.matching.baselines import BagOfWordsMatcher
    from cldg.matching.bm25 import BM25Matcher
    from cldg.matching.evaluation import candidate_sets, evaluate_matcher
    from cldg.matching.msn import MSN, MatchEncoder, MSNConfig, MSNMatcher, save_msn
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.text.vectors import load_word_vectors
    from cldg.training.trainer import TrainConfig, Trainer

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
        vectors, has = load_word_vectors(prepared.file("word-vectors.safetensors"))
        mcfg = MSNConfig(tok.vocab_size, vectors.shape[1], cfg.hidden, cfg.hops, cfg.gamma, cfg.heads, cfg.cnn_channels,
                         cfg.gru_hidden, cfg.dropout, cfg.max_turns, cfg.max_turn_len, cfg.max_response_len)
        model = MSN(mcfg)
        with torch.no_grad():
            rows = torch.from_numpy(has)
            model.embedding.weight[rows] = torch.from_numpy(vectors[has])
        train = read_pairs(prepared.file("pairs-train.parquet"))
        valid = read_pairs(prepared.file("pairs-valid.parquet"))
        idx = list(range(len(train)))
        if cfg.max_train_pairs and len(idx) > cfg.max_train_pairs:
            idx = sorted(random.Random(common.seed).sample(idx, cfg.max_train_pairs))
        enc = MatchEncoder(tok, mcfg)
        ctx_ids = [enc.context_ids(train.context[i]) for i in idx]
        resp_ids = [enc.response_ids(train.response[i]) for i in idx]
        v_n = min(cfg.max_valid_pairs or len(valid), len(valid))
        v_ctx, v_resp = valid.context[:v_n], valid.response[:v_n]
        sets = candidate_sets(v_resp, 9, common.seed)
        console.print(f"train-matcher: MSN {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{len(idx):,} train pairs, {len(sets):,} validation sets of 10, on {device}")

        def batches(epoch: int, start: int):
            rng = random.Random(common.seed * 31 + epoch)
            order = list(range(len(idx)))
            rng.shuffle(order)
            chunks = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            for rows_ in chunks[start:]:
                c = [ctx_ids[i] for i in rows_]
                r = [resp_ids[i] for i in rows_]
                labels = [1.0] * len(rows_)
                for _ in range(cfg.neg_ratio):  # random responses of other pairs as negatives
                    c += [ctx_ids[i] for i in rows_]
                    r += [resp_ids[rng.randrange(len(idx))] for _ in rows_]
                    labels += [0.0] * len(rows_)
                yield MatchEncoder.batch(c, r, labels)

        def loss_fn(m, b):
            logits = m(b.turns, b.response)
            loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
            acc = ((logits > 0).float() == b.labels).float().mean().item()
            return loss, {"accuracy": acc, "tokens": int(b.response.ne(0).sum())}

        def validate(m):
            metrics = evaluate_matcher(MSNMatcher(m, tok, device), v_ctx, v_resp, sets)
            m.train()
            return {"criterion": 1.0 - metrics["MRR"], **metrics}

        per_epoch = -(-len(idx) // cfg.batch_size)
        trainer = Trainer(model, TrainConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, eval_every=cfg.eval_every,
                                             patience=cfg.patience), run.dir, device, loss_fn, batches, per_epoch, validate)
        summary = trainer.fit(description="train MSN")
        trainer.load_best()
        save_msn(run.dir, model)
        results = {"msn": evaluate_matcher(MSNMatcher(model, tok, device), v_ctx, v_resp, sets),
                   "bm25": evaluate_matcher(BM25Matcher(tok.words, train.response), v_ctx, v_resp, sets),
                   "bow": evaluate_matcher(BagOfWordsMatcher(tok.words), v_ctx, v_resp, sets)}
        (run.dir / "metrics.json").write_text(json.dumps({"validation": results, **summary}, indent=2, default=float))
        print_selection_table(results)
        return run.commit(rows={"train_pairs": len(idx), "validation_sets": len(sets), "steps": summary["steps"]},
                          timings={"train_s": summary["train_seconds"]}, extra={"validation": results})


def print_selection_table(results: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    from cldg.progress import console

    table = Table(title="Response selection on valid (1 true + 9 random)")
    table.add_column("matcher")
    for k in ("R10@1", "R10@2", "R10@5", "MRR"):
        table.add_column(k, justify="right")
    for name, m in results.items():
        table.add_row(name, *(f"{m[k]:.3f}" for k in ("R10@1", "R10@2", "R10@5", "MRR")))
    console.print(table)
