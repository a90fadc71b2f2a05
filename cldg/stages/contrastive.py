"""Group-wise contrastive fine-tuning (the paper's method) of a target model against the frozen reference.

The target starts from the reference weights. The reference's log p(r|c) of every mined sequence is
computed once (its own `refcache` artifact). Each step scores all sequences of a batch of groups in
one pass, D = log p_target - log p_reference, and applies the chosen loss (eq4 by default). Validation:
contrastive loss + 0.5 NLL on the mined valid groups. Checkpoints, resume, early stopping, bf16 and DDP
come from the same trainer as `pretrain`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.approaches.contrastive import ContrastiveOptions
from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import LOSS_VARIANTS  # noqa: F401 (re-exported: this stage's choices)
from cldg.config import CommonOptions, fingerprint_config, option, options_from
from cldg.training.options import TrainOptions

SCHEMA = 1
PREPARE_SCHEMA = 1
SAMPLES_SCHEMA = 1
REFERENCE_SCHEMA = 1
REFCACHE_SCHEMA = 1  # the refcache artifact this stage also makes


@dataclass
class Config(ContrastiveOptions):
    reference_dir: Path | None = option(None, "Reference artifact (default: latest).", fingerprint=False)
    samples_dir: Path | None = option(None, "Samples artifact (default: latest).", fingerprint=False)
    cache_batch_size: int = option(256, "Batch size of the one-time reference pass.", fingerprint=False)
    lora_r: int = option(0, "hf: references only: train LoRA adapters of this rank, the base frozen (merged into "
                         "the saved weights; 0: all weights).", fingerprint=False)  # fingerprinted when set
    lora_alpha: int = option(16, "LoRA scaling alpha (with --lora-r).", fingerprint=False)


def run(cfg: Config, common: CommonOptions) -> Artifact:
    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.training import distributed
    from cldg.training.recipes.contrastive import ContrastiveRecipe
    from cldg.training.recipes.hf_contrastive import HFContrastiveRecipe
    from cldg.training.trainer import Trainer

    store = ArtifactStore(common.workdir)
    prepared, reference, samples = resolve_inputs(store, cfg)
    loss_applied = applied_loss(cfg)
    device = resolve_device(common.device)
    dist = distributed.init_from_env(device.type)
    device = distributed.device_for_rank(device, dist)
    config = fingerprint_config(cfg) | {"seed": common.seed, "loss_applied": loss_applied}
    config |= {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.lora_r else {}
    inputs = {"prepare": prepared, "reference": reference, "samples": samples}
    # under DDP every rank trains, rank 0 alone holds the lock, fills the reference cache and writes files
    with distributed.begin_on_ranks(store, dist, "contrastive", SCHEMA, config, inputs, force=common.force) as run:
        if run.existing:
            console.print(f"contrastive-train: complete artifact {run.existing.path} found - skipped")
            return run.existing
        set_seed(common.seed)
        data = load_groups(cfg, prepared, reference, samples)
        cache, ref_logp = reference_logprobs(store, cfg, reference, samples, data, device, dist)
        model, refreshed = target_and_reference(cfg, reference, run.dir, device, common.seed)
        console.print(f"contrastive-train: {len(data.train):,} train / {len(data.valid):,} valid groups, "
                      f"loss {loss_applied}, k = {cfg.k}, {len(ref_logp):,} cached reference log-probs, on {device}")
        recipe_class = HFContrastiveRecipe if holds_hf_model(reference) else ContrastiveRecipe
        recipe = recipe_class(data.train, data.valid, data.text, ref_logp, objective(cfg), cfg.batch_size,
                              common.seed, device, refreshed, dist)
        trainer = Trainer(model, options_from(TrainOptions, cfg), run.dir, device, recipe)
        summary = trainer.fit(description=f"contrastive {loss_applied}")
        if dist.rank != 0:
            distributed.barrier(dist)  # wait for rank 0 to commit
            return Artifact.load(run.final) if (run.final / "manifest.json").is_file() else None
        trainer.load_best()
        art = commit_contrastive(run, cfg, model, summary, loss_applied, data, reference, cache)
    distributed.barrier(dist)
    return art


def resolve_inputs(store: ArtifactStore, cfg: Config) -> tuple[Artifact, Artifact, Artifact]:
    """(prepare, reference, samples): the reference and the samples must come from the same prepare artifact."""
    from cldg.errors import CldgError

    reference = store.resolve_input("reference", cfg.reference_dir, REFERENCE_SCHEMA, "--reference-dir")
    samples = store.resolve_input("samples", cfg.samples_dir, SAMPLES_SCHEMA, "--samples-dir")
    prepared = Artifact.load(Path(reference.manifest["inputs"]["prepare"]["path"]))
    if samples.manifest["inputs"]["prepare"]["fingerprint"] != prepared.fingerprint:
        raise CldgError(f"{samples.path}: samples were mined from another prepare artifact than the reference "
                        f"was trained on ({reference.path}); rerun `cldg mine-samples`")
    if cfg.k > samples.manifest.get("k", cfg.k):
        raise CldgError(f"--k {cfg.k}: the samples were mined with k = {samples.manifest['k']}")
    if cfg.lora_r < 0 or cfg.lora_alpha < 1:
        raise CldgError("--lora-r must be >= 0 and --lora-alpha at least 1")
    if cfg.lora_r and not holds_hf_model(reference):
        raise CldgError(f"--lora-r {cfg.lora_r}: LoRA is for hf: references; {reference.path} holds a cldg model")
    if holds_hf_model(reference) and (cfg.from_scratch or cfg.refresh_reference_every):
        raise CldgError(f"--{'from-scratch' if cfg.from_scratch else 'refresh-reference-every'}: not available for "
                        f"the hf: reference {reference.path} (cldg models only)")
    return prepared, reference, samples


def holds_hf_model(art: Artifact) -> bool:
    """True when a model artifact holds a pretrained transformers model (`pretrain --model hf:PATH`)."""
    import json

    return json.loads(art.file("model.json").read_text()).get("name") == "hf"


def applied_loss(cfg: Config) -> str:
    """The loss that training applies: --no-matching-scores sets every s+ = 1 and s- = -1 in the groups, which
    turns eq4 into eq3 exactly."""
    return "eq3" if cfg.no_matching_scores and cfg.loss == "eq4" else cfg.loss


def objective(cfg: Config):
    from cldg.training.recipes.contrastive import ContrastiveObjective

    return ContrastiveObjective(cfg.loss, cfg.mle_weight, cfg.beta, cfg.mle_warmup_steps, cfg.nll_anneal,
                                cfg.anneal_speed)


@dataclass
class GroupData:
    text: object          # cldg.training.groups.TextIndex over the train and valid pairs
    train: object         # Groups of the train split, with this run's ablation flags
    valid: object         # the valid split's (at most --max-valid-groups)
    sequences: set        # every (context id, response id) that a group of any ablation can use


def load_groups(cfg: Config, prepared: Artifact, reference: Artifact, samples: Artifact) -> GroupData:
    from cldg.data.batching import Limits
    from cldg.data.pairs import read_pairs
    from cldg.errors import CldgError
    from cldg.retrieval.mining import read_samples
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.training.groups import GroupOptions, TextIndex, build_groups

    rcfg = reference.config
    limits = Limits.from_config(rcfg)
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    contexts, responses = {}, {}
    for split in ("train", "valid"):
        t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
        contexts.update(zip(t.pair_id, t.context))
        responses.update(zip(t.pair_id, t.response))
    table = read_samples(samples.path)
    opts = GroupOptions(cfg.k, cfg.no_positive_group, cfg.no_negative_group, cfg.no_group, cfg.response_side_only,
                        cfg.context_side_only, cfg.no_matching_scores)
    train_groups = build_groups(table, "train", opts)
    valid_groups = build_groups(table, "valid", opts)
    if len(train_groups) == 0:
        raise CldgError(f"{samples.path}: no training groups in the samples")
    if cfg.max_valid_groups and len(valid_groups) > cfg.max_valid_groups:
        valid_groups = valid_groups.first(cfg.max_valid_groups)
    # the reference pass covers every sequence any group of any ablation can use, so that one cache serves them all
    full = GroupOptions(samples.manifest.get("k", cfg.k))
    sequences = build_groups(table, "train", full).sequences() | build_groups(table, "valid", full).sequences()
    if holds_hf_model(reference):  # the model tokenizes the text itself; the refcache is keyed by its tokenization
        from cldg.models.hf import saved_tokenization_key
        from cldg.training.recipes.hf_contrastive import HFTextIndex

        key = {"max_context_turns": limits.max_context_turns, **saved_tokenization_key(reference.path)}
        return GroupData(HFTextIndex(contexts, responses, key), train_groups, valid_groups, sequences)
    return GroupData(TextIndex(tok, limits, contexts, responses), train_groups, valid_groups, sequences)


def reference_logprobs(store: ArtifactStore, cfg: Config, reference: Artifact, samples: Artifact, data: GroupData,
                       device, dist):
    """(refcache artifact, {sequence: log p_reference}): rank 0 computes the cache once, the other ranks read it."""
    from cldg.errors import CldgError
    from cldg.models import load_model
    from cldg.training import distributed
    from cldg.training.reference_cache import load_reference_cache

    limits = data.text.limits if isinstance(data.text.limits, dict) else vars(data.text.limits)
    if dist.rank == 0:
        ref_model = load_model(reference.path, device)
        cache = build_reference_cache(store, reference, samples, limits, ref_model, data.text, data.sequences,
                                      cfg.cache_batch_size, device)
        del ref_model
    distributed.barrier(dist)
    if dist.rank != 0:  # rank 0 made it: this only finds it
        cache = build_reference_cache(store, reference, samples, limits, None, data.text, data.sequences,
                                      cfg.cache_batch_size, device)
    ref_logp = load_reference_cache(cache)
    missing = next((s for s in data.sequences if s not in ref_logp), None)
    if missing is not None:
        raise CldgError(f"{cache.path}: no reference log-prob for sequence {missing}; rerun with --force")
    return cache, ref_logp


def build_reference_cache(store: ArtifactStore, reference: Artifact, samples: Artifact, limits_config: dict,
                          reference_model, text, seqs, batch_size: int, device, force: bool = False) -> Artifact:
    """The refcache artifact of (reference, samples, limits, precision): found, or computed once and committed."""
    import time

    from cldg.progress import console, make_progress
    from cldg.training import reference_cache

    seqs = sorted(set(seqs))
    config = {"limits": limits_config, "precision": reference_cache.precision(device)}
    with store.begin("refcache", REFCACHE_SCHEMA, config, {"reference": reference, "samples": samples},
                     force=force) as run:
        if run.existing:
            return run.existing
        t0 = time.time()
        with make_progress() as progress:
            task = progress.add_task("reference log p (once)", total=len(seqs), unit="seqs")
            logp = reference_cache.sequence_logprobs(reference_model, text, seqs, batch_size, device, progress, task,
                                                      resume_dir=run.dir / reference_cache.RESUME_DIR)
        reference_cache.write_reference_cache(run.dir / "logprobs.parquet", seqs, logp)
        seconds = time.time() - t0
        console.print(f"refcache: {len(seqs):,} reference log-probs in {seconds:.1f} s")
        return run.commit(rows={"sequences": len(seqs)}, timings={"compute_s": round(seconds, 3)})


def target_and_reference(cfg: Config, reference: Artifact, run_dir: Path, device, seed: int):
    """The target (the reference's weights, or its architecture freshly initialised with --from-scratch) and, with
    --refresh-reference-every, the reference copy that is refreshed from it."""
    from cldg.models import build_model, load_model
    from cldg.runtime import set_seed
    from cldg.training.groups import RefreshedReference

    model = load_model(reference.path, device)
    if cfg.lora_r:  # hf: only (checked in resolve_inputs): the adapters train, the base stays the reference
        from cldg.models.hf import LoraOptions

        model.add_adapters(LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha))
    if cfg.from_scratch:  # the reference's architecture with a fresh init (the model's own, not per-module)
        set_seed(seed)
        model = build_model(model.name, model.vocab_size, **model.config_dict()).to(device)
    model.train()
    if cfg.disable_dropout:  # D compares the target with the reference's eval-mode log-probs: score like for like
        from cldg.training.recipes.pairs import disable_dropout

        disable_dropout(model)
    refreshed = None
    if cfg.refresh_reference_every:
        refreshed = RefreshedReference(load_model(reference.path, device), cfg.refresh_reference_every,
                                       run_dir / "resume")
    return model, refreshed


def commit_contrastive(run, cfg: Config, model, summary: dict, loss_applied: str, data: GroupData,
                       reference: Artifact, cache: Artifact) -> Artifact:
    import json

    from cldg.models import save_model
    from cldg.progress import console

    save_model(run.dir, model)
    metrics = {"loss": loss_applied, "k": cfg.k, "best_valid_criterion": summary["best_criterion"], **summary}
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    console.print(f"contrastive-train: best valid criterion {summary['best_criterion']:.4f} at step "
                  f"{summary['best_step']} ({summary['stopped']}, {summary['steps']} steps)")
    return run.commit(rows={"train_groups": len(data.train), "valid_groups": len(data.valid),
                            "steps": summary["steps"]},
                      timings={"train_s": summary["train_seconds"]},
                      extra={"model": reference.manifest.get("model", {}), "refcache": str(cache.path)})
