"""MLE pretraining of the reference dialogue model (seq2seq, hred, hran or transformer), or MLE fine-tuning of a
pretrained transformers model (`--model hf:PATH`, a local directory: causal LM or encoder-decoder, its own tokenizer).

Adam, gradient clipping, validation every half epoch, early stopping, best and last checkpoints, and
resume after a crash or Ctrl-C (rerun the same command). CUDA with bf16 autocast when present;
several GPUs or machines with `torchrun --nproc-per-node N -m cldg.cli pretrain ...` (DDP, rank 0
writes the artifact; cldg models only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.approaches.mle import MLEOptions
from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import hf_path, is_hf_spec
from cldg.choices import MODELS as MODEL_CHOICES  # noqa: F401 (re-exported: this stage's choices)
from cldg.config import CommonOptions, fingerprint_config, option, options_from
from cldg.errors import CldgError
from cldg.training.options import TrainOptions

SCHEMA = 1
PREPARE_SCHEMA = 1
HF_OPTIONS = ("lora_r", "lora_alpha", "max_context_tokens", "max_response_tokens")  # fingerprinted for hf: only


@dataclass
class Config(MLEOptions):
    model: str = option("seq2seq", "Dialogue model: seq2seq, hred, hran, transformer, or hf:PATH (a local "
                        "transformers directory, fine-tuned by MLE with its own tokenizer; offline).")
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)
    lora_r: int = option(0, "hf: models: train LoRA adapters of this rank (merged into the saved weights; 0: all "
                         "weights).", fingerprint=False)
    lora_alpha: int = option(16, "hf: models: LoRA scaling alpha.", fingerprint=False)
    max_context_tokens: int = option(256, "hf: models: context tokens (cut on the left).", fingerprint=False)
    max_response_tokens: int = option(64, "hf: models: response tokens (end of turn included).", fingerprint=False)

    def __post_init__(self):  # a config file is checked when it is read, before earlier stages run for hours
        check_config(self)


def model_config(cfg) -> dict:
    """The registry config for cfg.model; 0 means the paper's default size."""
    if cfg.model == "transformer":
        emb = cfg.embedding_dim or 512
        return {"embedding_dim": emb, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers or 6,
                "ffn_dim": cfg.ffn_dim or 4 * emb, "dropout": cfg.dropout, "positions": cfg.positions,
                "max_positions": max(cfg.max_context_len, cfg.max_response_len) + 8}
    return {"embedding_dim": cfg.embedding_dim or 256, "hidden_size": cfg.hidden_size or 256,
            "num_layers": cfg.num_layers or 2, "dropout": cfg.dropout}


def is_hf(cfg) -> bool:
    return is_hf_spec(cfg.model)


def check_config(cfg: Config) -> None:
    """Bad values stop the stage with one line naming the option."""
    if not is_hf(cfg) and cfg.model not in MODEL_CHOICES:
        raise CldgError(f"--model {cfg.model!r}: not one of {', '.join(MODEL_CHOICES)}, or hf:PATH")
    if is_hf(cfg) and not hf_path(cfg.model).is_dir():
        raise CldgError(f"--model {cfg.model}: no such directory (hf:PATH names a local transformers model directory)")
    for name in HF_OPTIONS:
        if getattr(cfg, name) < (0 if name == "lora_r" else 1):
            raise CldgError(f"--{name.replace('_', '-')} must be at least {0 if name == 'lora_r' else 1}")


def pretrain_config(cfg: Config, common: CommonOptions) -> dict:
    """What the fingerprint covers: for hf: models also the directory's content and the hf options (so the
    fingerprints of cldg models are what they were before hf: models existed)."""
    config = fingerprint_config(cfg) | {"seed": common.seed}
    if is_hf(cfg):
        from cldg.models.hf import directory_digest

        config |= {name: getattr(cfg, name) for name in HF_OPTIONS} | {"hf_sha256": directory_digest(cfg.model, common.workdir)}
    return config


def run(cfg: Config, common: CommonOptions) -> Artifact:
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.training import distributed
    from cldg.training.trainer import Trainer

    store = ArtifactStore(common.workdir)
    prepared = store.resolve_input("prepare", cfg.prepare_dir, PREPARE_SCHEMA, "--prepare-dir")
    device = resolve_device(common.device)
    dist = distributed.init_from_env(device.type)
    device = distributed.device_for_rank(device, dist)
    if dist.enabled and is_hf(cfg):
        raise CldgError(f"--model {cfg.model}: hf: models train on one device (no DDP yet)")
    config = pretrain_config(cfg, common)
    # under DDP every rank trains, rank 0 alone holds the lock and writes the artifact
    with distributed.begin_on_ranks(store, dist, "reference", SCHEMA, config, {"prepare": prepared},
                                    force=common.force) as run:
        if run.existing:
            console.print(f"pretrain: complete artifact {run.existing.path} found - skipped")
            return run.existing
        set_seed(common.seed)
        built = (build_hf(cfg, prepared, common.seed, device) if is_hf(cfg)
                 else build_native(cfg, prepared, common.seed, device, dist))
        if dist.rank == 0:
            console.print(f"pretrain: {built.description}, {built.n_train:,} train / {built.n_valid:,} valid pairs on "
                          f"{device}" + (f", DDP world {dist.world_size}" if dist.enabled else ""))
        trainer = Trainer(built.model, options_from(TrainOptions, cfg), run.dir, device, built.recipe)
        summary = trainer.fit(description=f"pretrain {cfg.model}")
        if dist.rank != 0:
            distributed.barrier(dist)  # wait for rank 0 to commit
            return Artifact.load(run.final) if (run.final / "manifest.json").is_file() else None
        trainer.load_best()
        art = commit_reference(run, cfg, built, summary)
    distributed.barrier(dist)
    return art


@dataclass
class Built:
    model: object
    recipe: object
    description: str      # printed before training
    embedding_init: str   # how the embeddings were set (metrics.json)
    n_train: int
    n_valid: int


def build_native(cfg: Config, prepared: Artifact, seed: int, device, dist) -> Built:
    from cldg.training.recipes.mle import MLERecipe

    model, train, valid, embedding_init = build_model_and_data(cfg, prepared, seed)
    recipe = MLERecipe(train, valid, cfg.batch_size, seed, device, dist)
    return Built(model, recipe, f"{cfg.model}, {n_parameters(model) / 1e6:.2f}M parameters, embeddings: "
                 f"{embedding_init}", embedding_init, len(train), len(valid))


def build_hf(cfg: Config, prepared: Artifact, seed: int, device) -> Built:
    """The pretrained model (with LoRA adapters when --lora-r is set) and MLE on the pairs in its own tokens."""
    from cldg.models.hf import LoraOptions, load_hf_model
    from cldg.training.recipes.pairs import HFScorer, PairsRecipe, read_pairs_split

    lora = LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.lora_r else None
    model = load_hf_model(cfg.model, device, lora, cfg.max_context_tokens, cfg.max_response_tokens).train()
    train = read_pairs_split(prepared.path, "train", cfg.max_train_pairs, seed, cfg.max_context_turns)
    valid = read_pairs_split(prepared.path, "valid", cfg.max_valid_pairs, seed, cfg.max_context_turns)
    recipe = PairsRecipe(HFScorer(model), train, valid, cfg.batch_size, seed, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Built(model, recipe, f"{cfg.model}, {n_parameters(model) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
                 f"trained{', LoRA r ' + str(cfg.lora_r) if lora else ''})", "pretrained", len(train[0]),
                 len(valid[0]))


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


def commit_reference(run, cfg: Config, built: Built, summary: dict) -> Artifact:
    """Write the best weights and metrics.json into the artifact and commit it."""
    import json

    from cldg.models import save_model
    from cldg.progress import console
    from cldg.training.evaluation import perplexity

    save_model(run.dir, built.model)
    best_nll = summary["best_criterion"]
    metrics = {"model": cfg.model, "parameters": n_parameters(built.model), "best_valid_nll": best_nll,
               "best_valid_ppl": perplexity(best_nll), "embedding_init": built.embedding_init, **summary}
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    console.print(f"pretrain: best valid ppl {metrics['best_valid_ppl']:.2f} at step {summary['best_step']} "
                  f"({summary['stopped']}, {summary['steps']} steps)")
    return run.commit(rows={"train_pairs": built.n_train, "valid_pairs": built.n_valid, "steps": summary["steps"]},
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

