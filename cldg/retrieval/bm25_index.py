"""Lucene BM25 indexes of a prepare artifact's training pairs, built in-process through pyserini.

Two indexes, both keyed by pair id: `contexts/` (the joined context turns) and `responses/`.
English text goes through Lucene's default English analyzer (Porter stemming, stopwords removed);
`pretokenized` text (Chinese, already segmented) is split on whitespace only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable


def context_text(turns: Iterable[str]) -> str:
    return " ".join(turns)


def build_index(directory: Path, ids: list[int], texts: list[str], pretokenized: bool, threads: int,
                progress=None, task=None, chunk: int = 20000) -> None:
    """Index `texts` under their pair ids into `directory` (rebuilt from scratch)."""
    from pyserini.index.lucene import LuceneIndexer

    if directory.exists():
        shutil.rmtree(directory)
    # no -storeRaw: mining maps hits back to pairs by id, and without stored documents indexing is ~2x
    # and batch_search ~1.4x faster (measured on 42k chitchat contexts)
    args = ["-index", str(directory)]
    args += ["-pretokenized"] if pretokenized else ["-language", "en"]
    indexer = LuceneIndexer(args=args, threads=threads)
    for start in range(0, len(ids), chunk):
        docs = [json.dumps({"id": str(i), "contents": t}) for i, t in zip(ids[start:start + chunk], texts[start:start + chunk])]
        indexer.add_batch_raw(docs)
        if progress is not None:
            progress.advance(task, len(docs))
    indexer.close()
