"""MLE pretraining of the reference dialogue model (seq2seq, hred, hran or transformer).

Adam, gradient clipping, validation every half epoch, early stopping, best and last checkpoints, and
resume after a crash or Ctrl-C (rerun the same command). CUDA with bf16 autocast when present;
several GPUs or machines with `torchrun --nproc-per-node N -m cldg.cli pretrain ...` (DDP, rank 0
writes the artifact).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.approaches.mle import MLEOptions
from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import MODELS as MODEL_CHOICES  # noqa: F401 (re-exported: this stage's choices)
from cldg.config import CommonOptions, fingerprint_config, option, options_from
from cldg.training.options import TrainOptions

SCHEMA = 1
PREPARE_SCHEMA = 1


@dataclass
class Config(MLEOptions):
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)


def model_config(cfg) -> dict:
    """The registry config for cfg.model; 0 means the paper's default size."""
    if cfg.model == "transformer":
        emb = cfg.embedding_dim or 512
        return {"embedding_dim": emb, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers or 6,
                "ffn_dim": cfg.ffn_dim or 4 * emb, "dropout": cfg.dropout, "positions": cfg.positions,
                "max_positions": max(cfg.max_context_len, cfg.max_response_len) + 8}
    return {"embedding_dim": cfg.embedding_dim or 256, "hidden_size": cfg.hidden_size or 256,
            "num_layers": cfg.num_layers or 2, "dropout": cfg.dropout}


def run(cfg: Config, common: CommonOptions) -> Artifact:
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.training import distributed
    from cldg.training.recipes.mle import MLERecipe
    from cldg.training.trainer import Trainer

    store = ArtifactStore(common.workdir)
    prepared = store.resolve_input("prepare", cfg.prepare_dir, PREPARE_SCHEMA, "--prepare-dir")
    device = resolve_device(common.device)
    dist = distributed.init_from_env(device.type)
    device = distributed.device_for_rank(device, dist)
    config = fingerprint_config(cfg) | {"seed": common.seed}
    # under DDP every rank trains, rank 0 alone holds the lock and writes the artifact
    with store.begin("reference", SCHEMA, config, {"prepare": prepared}, force=common.force,
                     exclusive=dist.rank == 0) as run:
        if run.existing:
            console.print(f"pretrain: complete artifact {run.existing.path} found - skipped")
            return run.existing
        set_seed(common.seed)
        model, train, valid, embedding_init = build_model_and_data(cfg, prepared, common.seed)
        if dist.rank == 0:
            console.print(f"pretrain: {cfg.model}, {n_parameters(model) / 1e6:.2f}M parameters, embeddings: "
                          f"{embedding_init}, {len(train):,} train / {len(valid):,} valid pairs on {device}"
                          + (f", DDP world {dist.world_size}" if dist.enabled else ""))
        recipe = MLERecipe(train, valid, cfg.batch_size, common.seed, device, dist)
        trainer = Trainer(model, options_from(TrainOptions, cfg), run.dir, device, recipe)
        summary = trainer.fit(description=f"pretrain {cfg.model}")
        if dist.rank != 0:
            distributed.barrier(dist)  # wait for rank 0 to commit
            return Artifact.load(run.final) if (run.final / "manifest.json").is_file() else None
        trainer.load_best()
        art = commit_reference(run, cfg, model, summary, embedding_init, len(train), len(valid))
    distributed.barrier(dist)
    return art


def build_model_and_data(cfg: Config, prepared: Artifact, seed: int):
    """(model with word-vector embeddings, train pairs, valid pairs, how the embeddings were set)."""
    from cldg.data.batching import Limits
    from cldg.models import build_model
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.text.vectors import load_word_vectors

    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    limits = Limits(cfg.max_context_turns, cfg.max_turn_len, cfg.max_context_len, cfg.max_response_len)
    train = load_split(prepared, "train", tok, limits, cfg.max_train_pairs, seed)
    valid = load_split(prepared, "valid", tok, limits, cfg.max_valid_pairs, seed)
    model = build_model(cfg.model, tok.vocab_size, **model_config(cfg))
    vectors, has_vector = load_word_vectors(prepared.file("word-vectors.safetensors"))
    n_init = model.init_embeddings(vectors, has_vector, seed)
    emb_dim = model.embedding.weight.size(1)
    embedding_init = (f"{n_init:,} rows from {vectors.shape[1]}-d word vectors"
                      + ("" if vectors.shape[1] == emb_dim else f" through a seeded random projection to {emb_dim}-d"))
    return model, train, valid, embedding_init


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def commit_reference(run, cfg: Config, model, summary: dict, embedding_init: str, n_train: int,
                     n_valid: int) -> Artifact:
    """Write the best weights and metrics.json into the artifact and commit it."""
    import json

    from cldg.models import save_model
    from cldg.progress import console
    from cldg.training.evaluation import perplexity

    save_model(run.dir, model)
    best_nll = summary["best_criterion"]
    metrics = {"model": cfg.model, "parameters": n_parameters(model), "best_valid_nll": best_nll,
               "best_valid_ppl": perplexity(best_nll), "embedding_init": embedding_init, **summary}
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    console.print(f"pretrain: best valid ppl {metrics['best_valid_ppl']:.2f} at step {summary['best_step']} "
                  f"({summary['stopped']}, {summary['steps']} steps)")
    return run.commit(rows={"train_pairs": n_train, "valid_pairs": n_valid, "steps": summary["steps"]},
                      timings={"train_s": summary["train_seconds"]},
                      extra={"model": {"name": cfg.model, "parameters": metrics["parameters"]},
                             "best_valid_ppl": metrics["best_valid_ppl"]})


def load_split(prepared, split: str, tok, limits, max_pairs: int, seed: int):
    """A split's pairs, tokenized once (a seeded subset when max_pairs > 0)."""
    import random

    from cldg.data.batching import EncodedPairs
    from cldg.data.pairs import read_pairs

    t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
    idx = list(range(len(t)))
    if max_pairs and len(idx) > max_pairs:
        idx = sorted(random.Random(seed).sample(idx, max_pairs))
    return EncodedPairs(tok, [t.context[i] for i in idx], [t.response[i] for i in idx], limits)

