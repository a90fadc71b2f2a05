"""Decode the test contexts with a trained model and score the responses (the paper's Table 2 metrics).

--model reference | contrastive | any approach's model (the latest of that stage) | a model artifact directory |
a training's WORKDIR/STAGE/FP.partial directory while it runs (its best checkpoint so far, named STAGE@STEP) |
hf:PATH (a pretrained transformers directory as it is, on the latest prepare artifact's split). Writes
`generations.jsonl` (context, reference, generated, per-response metrics), `metrics.json`,
`report.md` and PNG plots, and prints the metrics laid out like the paper's Table 2.
`--json` prints metrics.json only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import EVAL_SPLITS, INPUT_FORMATS, is_hf_spec
from cldg.config import CommonOptions, fingerprint_config, option
from cldg.decoding.options import DecodingOptions
from cldg.errors import CldgError, require_file
from cldg.metrics import EXTRA_LAYOUT, PERCENT, TABLE_LAYOUT, fmt

SCHEMA = 1
JSON_OUTPUT = "metrics.json"


@dataclass
class Config(DecodingOptions):
    model: str = option("contrastive", "reference, contrastive, another approach's model, a model artifact directory, "
                        "a training's .partial directory (its best checkpoint so far, while it runs), or hf:PATH (a "
                        "local transformers directory as it is).")
    split: str = option("test", "Split to evaluate.", choices=EVAL_SPLITS)
    input: Path | None = option(None, "Score on this corpus file instead of a split (any format `prepare` reads; "
                                "every pair of it is a test pair; tokenized with the model's own tokenizer).")
    input_format: str = option("auto", "Format of --input.", choices=INPUT_FORMATS)
    limit: int = option(0, "Evaluate only the first N pairs (0 = all).")
    batch_size: int = option(64, "Contexts decoded at once.", fingerprint=False)
    contrastive_alpha: float = option(0.0, "hf: models: decode with contrastive search (SimCTG's decoding) instead: "
                                      "this degeneration penalty alpha (Su et al.: 0.6), k = --top-k (0: off).",
                                      fingerprint=False)  # in the fingerprint when set
    prepare_dir: Path | None = option(None, "With --model hf:PATH: the prepare artifact whose split it is scored on "
                                      "(default: latest; a model artifact brings its own).", fingerprint=False)

    def problems(self) -> list[str]:
        """What is wrong with these values, one line each (`cldg run` asks before any stage runs)."""
        return super().problems() + [msg for bad, msg in (
            (self.limit < 0, "--limit must be >= 0 (0 = all)"),
            (self.batch_size < 1, "--batch-size must be at least 1"),
            (not 0 <= self.contrastive_alpha <= 1, "--contrastive-alpha must be in [0, 1]"),
            (self.contrastive_alpha > 0 and bool(self.no_repeat_ngram or self.block_context_ngram),
             "--no-repeat-ngram and --block-context-ngram are not applied by contrastive search "
             "(--contrastive-alpha): set them to 0")) if bad]


def check_config(cfg: Config) -> None:
    """Bad values stop the stage with one line naming the option."""
    problems = cfg.problems()
    if problems:
        raise CldgError(f"evaluate: {problems[0]}")


def decode_all(model, tok, contexts: list[list[str]], limits, dcfg, batch_size: int, device,
               row_seeds: list[int], label: str = "decode", contrastive_alpha: float = 0.0) -> list[list[str]]:
    """Responses (as tokens) for every context, decoded in batches of similar context length.
    Sampling draws from a generator per context (`row_seeds`), so no output depends on the batching (an hf: model
    samples from the seeded global generator: its samples depend on the batch size)."""
    from cldg.data.batching import collate
    from cldg.decoding.search import generate
    from cldg.progress import make_progress

    if contrastive_alpha and not hasattr(model, "make_batch"):
        raise CldgError(f"--contrastive-alpha: contrastive search is for hf: models, not {model.name}")
    n = len(contexts)
    order = sorted(range(n), key=lambda i: sum(len(t) for t in contexts[i]))  # less padding per batch
    outputs: list[list[str]] = [[] for _ in range(n)]
    with make_progress() as progress:
        task = progress.add_task(label, total=n, unit="responses")
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if hasattr(model, "make_batch"):  # an hf: model: its generate(); the metrics take the text's words
                texts = hf_generate(model, [contexts[i] for i in idx], dcfg, contrastive_alpha)
                for i, text in zip(idx, texts):
                    outputs[i] = tok.words(text)
            else:
                batch = collate(tok, [contexts[i] for i in idx], None, limits).to(device)
                for i, ids in zip(idx, generate(model, batch, dcfg, row_seeds=[row_seeds[i] for i in idx])):
                    outputs[i] = tok.decode_tokens(ids)
            progress.advance(task, len(idx))
    return outputs


def hf_generate(model, contexts: list[list[str]], dcfg, contrastive_alpha: float) -> list[str]:
    """Responses of an hf: model: transformers' generate(), or contrastive search (k = top_k) when alpha is set."""
    if not contrastive_alpha:
        return model.generate(contexts, dcfg)
    from cldg.decoding.contrastive_search import contrastive_search

    ids = contrastive_search(model, contexts, k=dcfg.top_k, alpha=contrastive_alpha, max_len=dcfg.max_len,
                             min_len=dcfg.min_len)
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def decoding_label(cfg: Config, model=None) -> str:
    """How the responses were decoded, for metrics.json and the tables. A reranking model (MMI) decodes its own
    way whatever --decoding says: its forward model's N-best beam list, reranked."""
    if model is not None and callable(getattr(model, "rerank_scores", None)):
        return f"{model.nbest}-best MMI-{'antiLM' if getattr(model, 'objective', '') == 'antilm' else 'bidi'} rerank"
    return f"contrastive search (alpha {cfg.contrastive_alpha}, k {cfg.top_k})" if cfg.contrastive_alpha \
        else cfg.decoding


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import json
    import time

    from cldg.progress import console
    from cldg.runtime import resolve_device, set_seed
    from cldg.text.tokenizer import DialogueTokenizer

    check_config(cfg)
    store = ArtifactStore(common.workdir)
    source = resolve_eval_model(store, cfg)
    config = evaluation_config(cfg, common, source)
    with store.begin("eval", SCHEMA, config, source.inputs, force=common.force) as run:
        if run.existing:
            console.print(f"evaluate: complete artifact {run.existing.path} found - skipped")
            print_metrics_table(json.loads(run.existing.file("metrics.json").read_text()))
            return run.existing
        set_seed(common.seed)
        device = resolve_device(common.device)
        model = source.load(device)
        tok = DialogueTokenizer.load(source.prepared.file("tokenizer.json"))
        pairs, n = read_eval_pairs(cfg, source.prepared, source.limits)
        contexts, references = list(pairs.context[:n]), list(pairs.response[:n])

        t0 = time.time()
        row_seeds = [common.seed * 1_000_003 + int(pid) for pid in pairs.pair_id[:n]]
        outputs = decode_all(model, tok, contexts, source.limits, cfg.decode_config(), cfg.batch_size, device,
                             row_seeds, f"decode {decoding_label(cfg, model)}", cfg.contrastive_alpha)
        decode_s = time.time() - t0
        t0 = time.time()
        metrics, per = score(tok, source.prepared, outputs, contexts, references)
        metrics_s = time.time() - t0
        metrics["reference_ppl"] = reference_ppl(model, tok, contexts, references, source.limits, device)
        # words the model's vocabulary lacks (they become <unk>): high rates explain a poor score on a new corpus
        metrics["oov_rate_reference"] = oov_rate(tok, [tok.words(r) for r in references])
        metrics["oov_rate_context"] = oov_rate(tok, [tok.words(t) for c in contexts for t in c])
        # metrics.json holds only what the model and data decide (no timings, no paths): the same command with
        # the same seed gives the same bytes. Timings go to the manifest.
        metrics.update(model=source.label, model_fingerprint=source.fingerprint, decoding=decoding_label(cfg, model),
                       split="input" if cfg.input is not None else cfg.split,
                       decode_config={k: v for k, v in fingerprint_config(cfg).items() if k not in ("model", "input")})
        speed = round(n / max(decode_s, 1e-9), 1)
        write_outputs(run.dir, tok, pairs, outputs, contexts, references, metrics, per, speed)
        print_metrics_table(metrics)
        return run.commit(rows={"responses": n},
                          timings={"decode_s": round(decode_s, 2), "metrics_s": round(metrics_s, 2),
                                   "responses_per_second": speed},
                          extra={"metrics": {k: metrics[k] for _, k in TABLE_LAYOUT + EXTRA_LAYOUT}}
                          | checkpoint_record(source))


def checkpoint_record(source: "EvalModel") -> dict:
    """For a training's checkpoint, which run and check it came from (two runs' STAGE@STEP labels may match)."""
    best = source.checkpoint
    if best is None:
        return {}
    return {"checkpoint": {"run": str(best.run.path), "stage": best.run.stage, "fingerprint": best.run.fingerprint,
                           "step": best.step, "valid_criterion": best.criterion, "sha256": best.sha256}}


@dataclass
class EvalModel:
    """The model to evaluate: a model artifact, or a pretrained `hf:PATH` directory as it is (on the latest prepare
    artifact's split, its word-level metrics)."""
    label: str            # metrics.json "model": the artifact's stage, or hf:PATH
    fingerprint: str      # the artifact's fingerprint, or the sha256 of the directory's files
    prepared: Artifact    # tokenizer (the metrics' words), vectors, n-gram counts, the split
    limits: object        # cldg.data.batching.Limits: context turns (and the tokens of a cldg model)
    inputs: dict          # the eval artifact's inputs
    spec: str | Path      # what load() loads
    checkpoint: object = None  # cldg.model_artifacts.CheckpointInProgress: a training's best so far, held in memory

    def load(self, device):
        from cldg.models import load_model, load_model_from
        from cldg.models.hf import load_hf_model

        if self.checkpoint is not None:
            from safetensors.torch import load

            return load_model_from(self.checkpoint.meta, load(self.checkpoint.weights), device)
        return load_hf_model(self.spec, device).eval() if is_hf_spec(self.spec) else load_model(self.spec, device)


def resolve_eval_model(store: ArtifactStore, cfg: Config) -> EvalModel:
    from cldg.data.batching import Limits
    from cldg.approaches import model_stages
    from cldg.model_artifacts import is_in_progress, load_in_progress, model_limits, model_prepare, resolve_model

    if is_hf_spec(cfg.model):
        from cldg.approaches.mle import MLEOptions
        from cldg.models.hf import directory_digest

        digest = directory_digest(cfg.model, store.root)  # first: a missing directory is the error to report
        prepared = store.resolve_input("prepare", cfg.prepare_dir, 1, "--prepare-dir")
        o = MLEOptions()
        return EvalModel(cfg.model, digest, prepared, Limits(
            o.max_context_turns, o.max_turn_len, o.max_context_len, o.max_response_len), {"prepare": prepared},
            cfg.model)
    if is_in_progress(cfg.model):  # a training not ended: its best checkpoint so far, named STAGE@STEP
        best = load_in_progress(Path(cfg.model), model_stages())
        prepared = model_prepare(best.run)
        return EvalModel(best.label, best.sha256[:16], prepared, model_limits(best.run), {"prepare": prepared},
                         best.run.path, best)
    art = resolve_model(store, cfg.model)
    prepared = model_prepare(art)
    return EvalModel(art.stage, art.fingerprint, prepared, model_limits(art), {"model": art, "prepare": prepared},
                     art.path)


def reference_ppl(model, tok, contexts, references, limits, device) -> float:
    """Perplexity of the human responses: in the prepare tokenizer's words for cldg models, in the model's own
    tokens for hf: models (so only hf: models of one tokenizer compare on it)."""
    from cldg.training.evaluation import reference_perplexity

    if hasattr(model, "make_batch"):
        return model.perplexity(contexts, references)
    return reference_perplexity(model, tok, contexts, references, limits, device)


def evaluation_config(cfg: Config, common: CommonOptions, source: EvalModel) -> dict:
    """What the evaluation's fingerprint covers: 'reference' and the same reference's directory are one evaluation
    (the input fingerprint tells models apart), and an --input file counts by its content, not its name."""
    config = fingerprint_config(cfg) | {"seed": common.seed, "model": source.label}
    config |= {"contrastive_alpha": cfg.contrastive_alpha} if cfg.contrastive_alpha else {}
    if "model" not in source.inputs:  # a bare hf: directory or a checkpoint: its content, as an input's would
        config["model_sha256"] = source.fingerprint
    if cfg.input is not None:
        from cldg.artifacts import sha256_file

        require_file(cfg.input, "--input")
        config["input_sha256"] = sha256_file(Path(cfg.input))
    return config


def read_eval_pairs(cfg: Config, prepared: Artifact, limits):
    """(pairs, how many to evaluate): the split's, or every pair of the --input file."""
    from cldg.data.pairs import read_pairs

    if cfg.input is not None:
        pairs = read_input_pairs(Path(cfg.input), cfg.input_format, limits.max_context_turns)
        source = str(cfg.input)
    else:
        pairs = read_pairs(prepared.file(f"pairs-{cfg.split}.parquet"))
        source = str(prepared.file(f"pairs-{cfg.split}.parquet"))
    n = len(pairs) if not cfg.limit else min(cfg.limit, len(pairs))
    if n == 0:
        raise CldgError(f"{source}: no (context, response) pairs to evaluate")
    return pairs, n


def score(tok, prepared: Artifact, outputs: list[list[str]], contexts, references) -> tuple[dict, dict]:
    """(corpus metrics, per-response metrics). The paper's metrics work on tokens; sacreBLEU gets detokenized text."""
    from cldg.metrics import compute_all
    from cldg.metrics.embedding import WordVectors
    from cldg.text.ngrams import load_ngram_counts
    from cldg.text.vectors import load_word_vectors

    refs = [tok.words(r) for r in references]
    last = [tok.words(c[-1]) if c else [] for c in contexts]
    vectors, has = load_word_vectors(prepared.file("word-vectors.safetensors"))
    counts = load_ngram_counts(prepared.file("ngram-counts.parquet"))
    wv = WordVectors(vectors, has, tok.token_to_id, counts.get(1, {}))
    return compute_all(outputs, refs, last, counts, wv, tok.detokenize)


def write_outputs(directory: Path, tok, pairs, outputs, contexts, references, metrics: dict, per: dict,
                  speed: float) -> None:
    """generations.jsonl, metrics.json, report.md and the plots."""
    import json

    texts = [tok.detokenize(o) for o in outputs]  # what people read
    with open(directory / "generations.jsonl", "w", encoding="utf-8") as fh:
        for i in range(len(outputs)):
            fh.write(json.dumps({"pair_id": int(pairs.pair_id[i]), "context": contexts[i],
                                 "reference": references[i], "generated": texts[i],
                                 "generated_tokens": outputs[i],
                                 "metrics": {k: per[k][i] for k in per}}, ensure_ascii=False) + "\n")
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (directory / "report.md").write_text(markdown_report(metrics, texts, contexts, references, speed))
    write_plots(directory, metrics, per)


def read_input_pairs(path: Path, fmt: str, max_context_turns: int):
    """Every (context, response) pair of a corpus file, in file order, contexts cut as the model's were."""
    from cldg.data.loaders import BadLines, read_dialogues
    from cldg.data.pairs import CleanStats, clean_dialogues, make_pairs

    dialogues = clean_dialogues(read_dialogues(path, fmt, BadLines(skip=False)), CleanStats())
    if not dialogues:
        raise CldgError(f"{path}: no dialogue with at least two non-empty turns")
    return make_pairs({"train": [], "valid": [], "test": dialogues}, max_context_turns)["test"]


def oov_rate(tok, sentences: list[list[str]]) -> float:
    """Share of words outside the tokenizer's vocabulary."""
    from cldg.text.tokenizer import UNK

    words = [w for s in sentences for w in s]
    return sum(tok.token_to_id(w) == UNK for w in words) / max(len(words), 1)


def run_label(metrics: dict) -> str:
    return f"{metrics.get('model', '?')} ({metrics.get('decoding', '?')})"


def print_metrics_table(metrics: dict, title: str | None = None) -> None:
    """One row laid out like the paper's Table 2 (BLEU, Dist, embedding metrics in %; Ent in bits),
    then mean response length and the references' perplexity; sacreBLEU and the generated-n-gram
    entropies below it. On a narrow terminal the columns wrap into several tables, never truncated."""
    from rich import box
    from rich.table import Table

    from cldg.progress import console

    cols = [(name, fmt(k, metrics[k])) for name, k in TABLE_LAYOUT + EXTRA_LAYOUT]
    groups: list[list[tuple[str, str]]] = [[]]
    used = 4
    for name, value in cols:  # pack columns into tables as wide as the terminal
        width = max(len(name), len(value)) + 3
        if groups[-1] and used + width > console.width:
            groups.append([])
            used = 4
        groups[-1].append((name, value))
        used += width
    title = f"Automatic evaluation: {title or run_label(metrics)}, {metrics.get('responses', '?')} " \
            f"{metrics.get('split', '')} pairs"
    for i, group in enumerate(groups):
        table = Table(title=title if i == 0 else None, box=box.SIMPLE_HEAD, padding=(0, 1))
        for name, _ in group:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_row(*(v for _, v in group))
        console.print(table)
    console.print(f"(BLEU, Dist, Avg./Ext./Gre./Coh. in %; Ent in bits)  sacreBLEU {metrics['sacrebleu']:.2f}; "
                  f"generated n-gram entropy {metrics['gen_entropy1']:.3f} / {metrics['gen_entropy2']:.3f} bits")
    if "oov_rate_reference" in metrics:  # on someone else's test set (--input) it explains a poor score
        console.print(f"words outside the model's vocabulary: {100 * metrics['oov_rate_reference']:.1f}% of the human "
                      f"responses', {100 * metrics['oov_rate_context']:.1f}% of the contexts'")


def markdown_report(metrics: dict, outputs: list[str], contexts: list[list[str]], references: list[str],
                    speed: float | None = None, examples: int = 10) -> str:
    cols = TABLE_LAYOUT + EXTRA_LAYOUT
    lines = [f"# Evaluation: {run_label(metrics)}, {metrics['responses']} {metrics['split']} pairs", "",
             "BLEU, Dist and the embedding metrics in %, Ent in bits (the paper's Table 2 layout).", "",
             "| Model | " + " | ".join(name for name, _ in cols) + " |",
             "|---|" + "---:|" * len(cols),
             f"| {metrics['model']} | " + " | ".join(fmt(k, metrics[k]) for _, k in cols) + " |", "",
             f"- sacreBLEU (corpus): {metrics['sacrebleu']:.2f}",
             f"- generated-n-gram entropy: {metrics['gen_entropy1']:.3f} (1-gram), {metrics['gen_entropy2']:.3f} (2-gram) bits",
             f"- decoding: {metrics['decoding']}" + (f", {speed} responses/s" if speed is not None else "")]
    if "oov_rate_reference" in metrics:
        lines.append(f"- words outside the model's vocabulary: {100 * metrics['oov_rate_reference']:.1f}% of the human "
                     f"responses', {100 * metrics['oov_rate_context']:.1f}% of the contexts'")
    lines += ["", "## Examples", ""]
    for i in range(min(examples, len(outputs))):
        lines += [f"- **context**: {' / '.join(contexts[i])}", f"  - **reference**: {references[i]}",
                  f"  - **generated**: {outputs[i]}"]
    return "\n".join(lines) + "\n"


def write_plots(directory: Path, metrics: dict, per: dict) -> None:
    """metrics.png (the %-metrics as bars) and lengths.png (generated-length histogram)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    shown = [(n, k) for n, k in TABLE_LAYOUT if k in PERCENT]
    ax.bar([n for n, _ in shown], [100 * metrics[k] for _, k in shown], color="#4477aa")
    ax.set_ylabel("%")
    ax.set_title(run_label(metrics))
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
