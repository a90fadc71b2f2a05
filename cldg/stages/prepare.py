"""Turn a corpus into train/valid/test pairs, a tokenizer, n-gram counts and word vectors.

Reads the chitchat corpus (default, offline) or a local file (--input, --format), builds a pair per
turn after the first, splits by dialogue with the seed, and writes `pairs-{train,valid,test}.parquet`,
`tokenizer.json`, `ngram-counts.parquet` and `word-vectors.safetensors`. The manifest records the
paper's Table-1 statistics and every line skipped under --skip-bad-lines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore, sha256_file
from cldg.config import CommonOptions, fingerprint_config, option
from cldg.data.loaders import FORMATS

SCHEMA = 1


@dataclass
class Config:
    input: Path | None = option(None, "Corpus file; left out: the chitchat corpus of the chitchat-dataset package.")
    format: str = option("auto", "Corpus format.", choices=FORMATS)
    # The paper's corpora average 2.7-3.9 context turns (Table 1); 3 keeps the short chit-chat
    # exchanges whole while bounding the context encoders' work.
    max_context_turns: int = option(3, "Earlier turns kept as context (the paper's corpora average 2.7-3.9).")
    valid_fraction: float = option(0.05, "Share of dialogues for validation.")
    test_fraction: float = option(0.05, "Share of dialogues for test.")
    max_dialogues: int = option(0, "Use only this many dialogues (seeded subset; 0 = all).")
    max_pairs: int = option(0, "Use only whole dialogues up to this many pairs in all (seeded subset; 0 = all).")
    vocab_size: int = option(20000, "Vocabulary cap (special tokens included).")
    min_freq: int = option(1, "Minimum word frequency for the vocabulary.")
    lowercase: bool = option(True, "Lowercase text in the tokenizer.")
    pretokenized: bool = option(False, "Text is already segmented (e.g. Chinese): split on whitespace only.")
    vectors: Path | None = option(None, "A fastText .vec file; left out: train fastText on the training text.")
    vector_dim: int = option(300, "Dimension of trained word vectors (the paper: 300).")
    vector_epochs: int = option(5, "Epochs of fastText training.")
    skip_bad_lines: bool = option(False, "Skip (and report) malformed lines instead of stopping.")
    max_line_bytes: int = option(1 << 20, "Longest input line accepted, in bytes.")
    workers: int = option(2, "Threads for fastText training (1 under --deterministic: gensim's threads race, so "
                          "more than one gives different vectors each run).", fingerprint=False)


def run(cfg: Config, common: CommonOptions) -> Artifact:
    from cldg.data.loaders import BadLines, read_dialogues
    from cldg.data.pairs import (SPLITS, CleanStats, clean_dialogues, make_pairs, split_dialogues, subset_dialogues,
                                 write_pairs_parquet)
    from cldg.errors import CldgError
    from cldg.progress import console

    check_options(cfg)
    store = ArtifactStore(common.workdir)
    with store.begin("prepare", SCHEMA, prepare_config(cfg, common), force=common.force) as run:
        if run.existing:
            console.print(f"prepare: complete artifact {run.existing.path} found - skipped (use --force to rebuild)")
            return run.existing
        timings = {}
        t0 = time.time()
        bad = BadLines(skip=cfg.skip_bad_lines)
        stats = CleanStats()
        dialogues = clean_dialogues(read_dialogues(cfg.input, cfg.format, bad, cfg.max_line_bytes), stats)
        if not dialogues:
            raise CldgError(f"{cfg.input or 'chitchat'}: no dialogue with at least two non-empty turns")
        dialogues = subset_dialogues(dialogues, cfg.max_dialogues, cfg.max_pairs, common.seed)
        splits = split_dialogues(dialogues, cfg.valid_fraction, cfg.test_fraction, common.seed)
        tables = make_pairs(splits, cfg.max_context_turns)
        for s in ("valid", "test"):
            if len(tables[s]) == 0:  # training validates on it, evaluate scores it: say so now, not stages later
                flag = f"--{s}-fraction"
                console.print(f"[yellow]warning:[/] the {s} split has no pairs ({len(dialogues)} dialogues, {flag} "
                              f"{getattr(cfg, f'{s}_fraction')}): give a larger corpus or a larger {flag}",
                              highlight=False)
        for s in SPLITS:
            write_pairs_parquet(tables[s], run.dir / f"pairs-{s}.parquet")
        timings["read_and_pair_s"] = round(time.time() - t0, 3)

        # Tokenizer, n-grams and vectors see the training dialogues only (no test leakage).
        t0 = time.time()
        train_turns = [t for d in splits["train"] for t in d.turns]
        tok, tokenized = write_tokenizer_and_ngrams(cfg, train_turns, run.dir)
        timings["tokenizer_ngrams_s"] = round(time.time() - t0, 3)
        t0 = time.time()
        has = write_word_vectors(cfg, common, tok, tokenized, run.dir)
        timings["vectors_s"] = round(time.time() - t0, 3)
        return commit_prepare(run, cfg, splits, tables, tok, stats, bad, has, timings)


def check_options(cfg: Config) -> None:
    from cldg.errors import CldgError
    from cldg.text.tokenizer import SPECIALS

    for name in ("valid_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, name) < 0.5:
            raise CldgError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be in [0, 0.5)")
    if cfg.max_context_turns < 1:
        raise CldgError(f"--max-context-turns {cfg.max_context_turns}: must be at least 1")
    for name in ("max_dialogues", "max_pairs", "vector_epochs", "min_freq"):
        if getattr(cfg, name) < 0:
            raise CldgError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must not be negative")
    if cfg.vector_dim < 1:
        raise CldgError(f"--vector-dim {cfg.vector_dim}: must be at least 1")
    if cfg.vocab_size <= len(SPECIALS):
        raise CldgError(f"--vocab-size {cfg.vocab_size}: must exceed the {len(SPECIALS)} special tokens")


def prepare_config(cfg: Config, common: CommonOptions) -> dict:
    """The fingerprinted config: the corpus and vectors files count by their content, not only their names."""
    from cldg.errors import require_file

    config = fingerprint_config(cfg) | {"seed": common.seed}
    if cfg.input is not None:
        require_file(cfg.input, "--input")
        config["input_sha256"] = sha256_file(Path(cfg.input))
    if cfg.vectors is not None:
        require_file(cfg.vectors, "--vectors")
        config["vectors_sha256"] = sha256_file(Path(cfg.vectors))
    return config


def write_tokenizer_and_ngrams(cfg: Config, train_turns: list[str], directory: Path):
    """(tokenizer, the training turns as its words), with tokenizer.json and ngram-counts.parquet written."""
    from cldg.text.ngrams import count_ngrams, save_ngram_counts
    from cldg.text.tokenizer import DialogueTokenizer

    tok = DialogueTokenizer.train(train_turns, cfg.vocab_size, cfg.min_freq, cfg.pretokenized, cfg.lowercase)
    tok.save(directory / "tokenizer.json")
    tokenized = [tok.words(t) for t in train_turns]
    save_ngram_counts(count_ngrams(tokenized, 2), directory / "ngram-counts.parquet")
    return tok, tokenized


def write_word_vectors(cfg: Config, common: CommonOptions, tok, tokenized, directory: Path):
    """word-vectors.safetensors from the --vectors file or from fastText trained here; returns has_vector."""
    from cldg.progress import console, make_progress
    from cldg.text.tokenizer import SPECIALS
    from cldg.text.vectors import read_vec_file, save_word_vectors, train_fasttext, vectors_from_fasttext

    if cfg.vectors is not None:
        console.print(f"prepare: reading word vectors from {cfg.vectors}")
        vecs, has = read_vec_file(Path(cfg.vectors), tok.vocab(), len(SPECIALS), cfg.lowercase)
    else:
        with make_progress() as progress:
            task = progress.add_task(f"fastText {cfg.vector_dim}-d", total=cfg.vector_epochs, unit="epochs")
            workers = 1 if common.deterministic else cfg.workers
            wv = train_fasttext(tokenized, cfg.vector_dim, cfg.vector_epochs, common.seed, workers,
                                on_epoch_end=lambda: progress.update(task, advance=1))
        vecs, has = vectors_from_fasttext(wv, tok.vocab(), len(SPECIALS))
    save_word_vectors(directory / "word-vectors.safetensors", vecs, has)
    return has


def commit_prepare(run, cfg: Config, splits, tables, tok, stats, bad, has, timings: dict) -> Artifact:
    """Print the paper's Table-1 statistics and commit them with the artifact."""
    from rich.table import Table

    from cldg.data.pairs import SPLITS, corpus_statistics
    from cldg.progress import console

    corpus = corpus_statistics(splits, tables, lambda u: len(tok.words(u)), tok.vocab_size)
    corpus.update(dialogues_read=stats.dialogues_in, renamed_duplicate_ids=stats.renamed_duplicate_ids,
                  empty_turns_dropped=stats.empty_turns_dropped,
                  short_dialogues_dropped=stats.short_dialogues_dropped, skipped_lines=len(bad.lines),
                  words_with_vectors=int(has.sum()))
    _print_stats(console, corpus, Table)
    if bad.lines:
        console.print(f"prepare: skipped {len(bad.lines)} bad line(s) (listed in manifest.json), first: {bad.lines[0]}")
    return run.commit(rows={f"{s}_pairs": len(tables[s]) for s in SPLITS}, timings=timings,
                      extra={"corpus_stats": corpus, "skipped_lines": bad.lines,
                             "source": str(cfg.input) if cfg.input else "chitchat-dataset"})


def _print_stats(console, corpus: dict, Table) -> None:
    table = Table(title="Corpus statistics (the paper's Table 1)")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key in ("pairs", "train_pairs", "valid_pairs", "test_pairs", "avg_turns_per_context",
                "avg_words_per_utterance", "vocabulary", "train_dialogues", "valid_dialogues", "test_dialogues",
                "duplicate_train_pairs", "heldout_pairs_seen_in_train", "duplicate_dialogues",
                "empty_turns_dropped", "short_dialogues_dropped", "skipped_lines"):
        v = corpus[key]
        table.add_row(key.replace("_", " "), f"{v:,}" if isinstance(v, int) else f"{v:.2f}")
    console.print(table)
