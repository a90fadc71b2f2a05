"""Decode the test contexts with a trained model and score the responses (the paper's Table 2 metrics).

--model reference | contrastive (the latest of that stage) | a model artifact directory. Writes
`generations.jsonl`, `metrics.json`, `report.md` and PNG plots, and prints the metrics laid out like
the paper's Table 2. `--json` prints metrics.json only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.config import CommonOptions, fingerprint_config, option
from cldg.decoding.search import METHODS

SCHEMA = 1
JSON_OUTPUT = "metrics.json"

TABLE_LAYOUT = [("BLEU-1", "bleu1"), ("BLEU-2", "bleu2"), ("BLEU-3", "bleu3"), ("BLEU-4", "bleu4"),
                ("Dist-1", "dist1"), ("Dist-2", "dist2"), ("Dist-3", "dist3"), ("Ent-1", "ent1"), ("Ent-2", "ent2"),
                ("Avg.", "average"), ("Ext.", "extrema"), ("Gre.", "greedy"), ("Coh.", "coherence")]
PERCENT = {"bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "dist3", "average", "extrema", "greedy", "coherence"}


@dataclass
class Config:
    model: str = option("contrastive", "reference, contrastive, or a model artifact directory.")
    decoding: str = option("greedy", "Decoding method.", choices=METHODS)
    beam_size: int = option(5, "Beam size (beam).")
    length_penalty: float = option(1.0, "GNMT length penalty alpha (beam).")
    top_k: int = option(10, "k (topk).")
    top_p: float = option(0.9, "p (nucleus).")
    temperature: float = option(1.0, "Sampling temperature (topk, nucleus).")
    max_len: int = option(30, "Longest response, in tokens.")
    min_len: int = option(1, "Shortest response, in tokens.")
    no_repeat_ngram: int = option(0, "Block repeated n-grams inside the response (0 = off).")
    block_context_ngram: int = option(0, "Block n-grams copied from the context (0 = off).")
    split: str = option("test", "Split to evaluate.", choices=("test", "valid"))
    limit: int = option(0, "Evaluate only the first N pairs (0 = all).")
    batch_size: int = option(64, "Contexts decoded at once.", fingerprint=False)


def decode_config(cfg: Config):
    from cldg.decoding.search import DecodeConfig

    return DecodeConfig(cfg.decoding, cfg.beam_size, cfg.length_penalty, cfg.top_k, cfg.top_p, cfg.temperature,
                        cfg.max_len, cfg.min_len, cfg.no_repeat_ngram, cfg.block_context_ngram)


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import json
    import time

    import torch

    from cldg.data.batching import collate
    from cldg.data.pairs import read_pairs
    from cldg.decoding.search import generate
    from cldg.metrics import compute_all
    from cldg.metrics.embedding import WordVectors
    from cldg.models import load_model
    from cldg.models.resolve import model_limits, model_prepare, resolve_model
    from cldg.progress import console, make_progress
    from cldg.runtime import resolve_device, set_seed
    from cldg.training.evaluation import reference_perplexity
    from cldg.text.ngrams import load_ngram_counts
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.text.vectors import load_word_vectors

    store = ArtifactStore(common.workdir)
    model_art = resolve_model(store, cfg.model)
    prepared = model_prepare(model_art)
    config = fingerprint_config(cfg) | {"seed": common.seed, "model": model_art.stage}
    with store.begin("eval", SCHEMA, config, {"model": model_art, "prepare": prepared}, force=common.force) as run:
        if run.existing:
            console.print(f"evaluate: complete artifact {run.existing.path} found - skipped")
            print_metrics_table(run.existing.manifest["metrics"], f"{model_art.stage} ({cfg.decoding})")
            return run.existing
        set_seed(common.seed)
        device = resolve_device(common.device)
        model = load_model(model_art.path, device)
        tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
        limits = model_limits(model_art)
        pairs = read_pairs(prepared.file(f"pairs-{cfg.split}.parquet"))
        n = len(pairs) if not cfg.limit else min(cfg.limit, len(pairs))
        contexts, references = pairs.context[:n], pairs.response[:n]
        dcfg = decode_config(cfg)
        gen = torch.Generator().manual_seed(common.seed)
        order = sorted(range(n), key=lambda i: sum(len(t) for t in contexts[i]))  # similar lengths batch together
        outputs: list[str] = [""] * n
        t0 = time.time()
        with make_progress() as progress:
            task = progress.add_task(f"decode {cfg.decoding}", total=n, unit="responses")
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                batch = collate(tok, [contexts[i] for i in idx], None, limits).to(device)
                for i, ids in zip(idx, generate(model, batch, dcfg, gen)):
                    outputs[i] = tok.decode(ids)
                progress.advance(task, len(idx))
        decode_s = time.time() - t0
        t0 = time.time()
        hyps = [tok.words(o) for o in outputs]
        refs = [tok.words(r) for r in references]
        last = [tok.words(c[-1]) if c else [] for c in contexts]
        vectors, has = load_word_vectors(prepared.file("word-vectors.safetensors"))
        counts = load_ngram_counts(prepared.file("ngram-counts.parquet"))
        wv = WordVectors(vectors, has, tok.tok.token_to_id, counts.get(1, {}))
        metrics, per = compute_all(hyps, refs, last, counts, wv)
        metrics["reference_ppl"] = reference_perplexity(model, tok, contexts, references, limits, device)
        metrics_s = time.time() - t0
        metrics.update(model=model_art.stage, model_path=str(model_art.path), decoding=cfg.decoding, split=cfg.split,
                       decode_seconds=round(decode_s, 2), responses_per_second=round(n / max(decode_s, 1e-9), 1))
        with open(run.dir / "generations.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"pair_id": pairs.pair_id[i], "context": contexts[i], "reference": references[i],
                                     "generated": outputs[i], "metrics": {k: per[k][i] for k in per}},
                                    ensure_ascii=False) + "\n")
        (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (run.dir / "report.md").write_text(markdown_report(metrics, outputs, contexts, references))
        write_plots(run.dir, metrics, per)
        print_metrics_table(metrics, f"{model_art.stage} ({cfg.decoding})")
        return run.commit(rows={"responses": n}, timings={"decode_s": round(decode_s, 2), "metrics_s": round(metrics_s, 2)},
                          extra={"metrics": metrics})


def fmt(key: str, value: float) -> str:
    return f"{100 * value:.2f}" if key in PERCENT else f"{value:.3f}"


def print_metrics_table(metrics: dict, title: str) -> None:
    """The paper's Table 2 metrics (in %, entropies in bits), plus length, reference ppl and sacreBLEU."""
    from rich.table import Table

    from cldg.progress import console

    table = Table(title=f"Automatic evaluation: {title}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, key in TABLE_LAYOUT:
        table.add_row(name + (" (%)" if key in PERCENT else " (bits)"), fmt(key, metrics[key]))
    table.add_row("length (words)", f"{metrics['length']:.2f}")
    table.add_row("reference ppl", f"{metrics['reference_ppl']:.2f}")
    table.add_row("sacreBLEU", f"{metrics['sacrebleu']:.2f}")
    console.print(table)


def markdown_report(metrics: dict, outputs: list[str], contexts: list[list[str]], references: list[str]) -> str:
    head = "| " + " | ".join(name for name, _ in TABLE_LAYOUT) + " | len | ref ppl | sacreBLEU |"
    sep = "|" + "---|" * (len(TABLE_LAYOUT) + 3)
    row = "| " + " | ".join(fmt(k, metrics[k]) for _, k in TABLE_LAYOUT) + \
          f" | {metrics['length']:.1f} | {metrics['reference_ppl']:.1f} | {metrics['sacrebleu']:.2f} |"
    lines = [f"# Evaluation: {metrics['model']} ({metrics['decoding']}, {metrics['responses']} {metrics['split']} pairs)",
             "", "BLEU, Dist and embedding metrics in %, Ent in bits.", "", head, sep, row, "", "## Examples", ""]
    for i in range(min(10, len(outputs))):
        lines += [f"- **context**: {' / '.join(contexts[i])}", f"  - **reference**: {references[i]}",
                  f"  - **generated**: {outputs[i]}"]
    return "\n".join(lines) + "\n"


def write_plots(directory: Path, metrics: dict, per: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    keys = [k for _, k in TABLE_LAYOUT if k in PERCENT]
    ax.bar([n for n, k in TABLE_LAYOUT if k in PERCENT], [100 * metrics[k] for k in keys], color="#4477aa")
    ax.set_ylabel("%")
    ax.set_title(f"{metrics['model']} ({metrics['decoding']})")
    fig.tight_layout()
    fig.savefig(directory / "metrics.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(per["length"], bins=range(0, int(max(per["length"] + [1])) + 2), color="#228833")
    ax.set_xlabel("generated length (words)")
    ax.set_ylabel("responses")
    fig.tight_layout()
    fig.savefig(directory / "lengths.png", dpi=120)
    plt.close(fig)
