"""Mine the group-wise dual samples (k positives and k negatives per side) of every train and valid pair.

Output: `shard-XXXXX-of-YYYYY.parquet` files in the long format of docs/internals.md.

Many machines: the work is cut into N shards (`--shard I/N`, or `--num-shards N` for one process
doing them all). Every worker that points at the same workdir (a shared filesystem) with the same
options writes into the same `samples/<fingerprint>.partial/`: the fingerprint does not depend on I,
each shard has its own lock and is written atomically (tmp + rename), a rerun skips the shards that
are there and resumes a half-done shard at its last finished chunk, and whichever worker completes the
last shard commits the artifact. Example on two machines sharing /shared/work (NFS or similar; the
per-shard locks are flock(2) locks, which NFSv4 honours):

    machine A: cldg mine-samples --workdir /shared/work --shard 0/2
    machine B: cldg mine-samples --workdir /shared/work --shard 1/2

Without a shared filesystem, copy the prepare and index artifacts to each machine (same fingerprints),
mine a shard on each, then copy every `shard-*.parquet` into one machine's
`samples/<fingerprint>.partial/` and run `cldg mine-samples --num-shards N` there: it finds all shards
and commits. A pair's samples do not depend on N or on which machine mined it, so `--shard 0/2` plus
`--shard 1/2` give the same rows as one process mining everything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.choices import MATCHERS, RETRIEVAL_BACKENDS
from cldg.config import CommonOptions, fingerprint_config, option
from cldg.errors import CldgError

SCHEMA = 1
PREPARE_SCHEMA = 1
INDEX_SCHEMA = 1
MATCHER_SCHEMA = 1


@dataclass
class Config:
    matcher: str = option("msn", "Matcher that ranks the candidates.", choices=MATCHERS)
    k: int = option(3, "Group size: positives and negatives per side.")
    n_candidates: int = option(50, "BM25 candidates per query.")
    n_random: int = option(20, "Random candidates added per query.")
    max_pairs: int = option(0, "Mine only the first N train pairs (0 = all; valid pairs are always mined).")
    num_shards: int = option(1, "Shards the work is cut into (one process does them all).")
    shard: str = option("", "Mine only shard I of N ('I/N'); the artifact completes when all N exist.",
                        fingerprint=False)
    prepare_dir: Path | None = option(None, "Prepare artifact (default: latest).", fingerprint=False)
    index_dir: Path | None = option(None, "Index artifact (default: latest).", fingerprint=False)
    matcher_dir: Path | None = option(None, "Matcher artifact for --matcher msn (default: latest).", fingerprint=False)
    chunk_size: int = option(2000, "Queries per retrieval + scoring chunk (a resume point).", fingerprint=False)
    threads: int = option(2, "Search threads.", fingerprint=False)
    # numpy by default: Lucene's hits (the same top-50 lists on 1,000 full-chitchat queries) at 3.7x Lucene's
    # speed on one thread, and it releases the GIL (bench/bench_bm25.py, README Performance)
    retrieval: str = option("numpy", "BM25 search: numpy (Lucene's analysis and BM25 over postings in memory, a "
                            "compiled loop; cldg/retrieval/sparse.py), or lucene (anserini). The same hits.",
                            choices=RETRIEVAL_BACKENDS, fingerprint=False)
    # off by default: measured on 2 quiet cores (bench/bench_mining.py), MSN scoring on one thread beside the
    # retrieval thread lost more (4,161 -> 2,479 pairs/s) than the overlap saved (retrieval is ~15% of the work)
    overlap: bool = option(False, "Retrieve the next chunk in a second thread while the matcher scores this one on "
                           "one thread fewer (same rows; pays off only where retrieval is a large share).",
                           fingerprint=False)
    score_batch_size: int = option(512, "Matcher batch size.", fingerprint=False)
    java_heap: str = option("2g", "JVM heap cap (searching needs little heap; a larger cap only raises peak memory).",
                           fingerprint=False)


def parse_shard(spec: str, num_shards: int) -> tuple[list[int], int]:
    """('I/N' or '') -> (shards this process mines, N)."""
    if not spec:
        if num_shards < 1:
            raise CldgError(f"--num-shards {num_shards}: must be at least 1")
        return list(range(num_shards)), num_shards
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise CldgError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return [int(m.group(1))], int(m.group(2))


def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.parquet"


def run(cfg: Config, common: CommonOptions) -> Artifact:
    import time

    import pyarrow.parquet as pq

    from cldg.progress import console
    from cldg.retrieval.mining import COLUMNS, table_notes

    if cfg.k < 1 or cfg.n_candidates < 0 or cfg.n_random < 0:
        raise CldgError("--k must be >= 1, --n-candidates and --n-random >= 0")
    shards, n_shards = parse_shard(cfg.shard, cfg.num_shards)
    store = ArtifactStore(common.workdir)
    prepared = store.resolve_input("prepare", cfg.prepare_dir, PREPARE_SCHEMA, "--prepare-dir")
    index = store.resolve_input("index", cfg.index_dir, INDEX_SCHEMA, "--index-dir")
    inputs = {"prepare": prepared, "index": index}
    if cfg.matcher == "msn":
        inputs["matcher"] = store.resolve_input("matcher", cfg.matcher_dir, MATCHER_SCHEMA, "--matcher-dir")
    config = fingerprint_config(cfg) | {"seed": common.seed, "num_shards": n_shards}
    with store.begin("samples", SCHEMA, config, inputs, force=common.force, exclusive=False) as run:
        if run.existing:
            console.print(f"mine-samples: complete artifact {run.existing.path} found - skipped")
            return run.existing
        t_start = time.time()
        todo = [s for s in shards if not (run.dir / shard_name(s, n_shards)).exists()]
        if todo:
            mine_shards(run.dir, todo, n_shards, cfg, common, prepared, index, inputs)
        missing = [i for i in range(n_shards) if not (run.dir / shard_name(i, n_shards)).exists()]
        if missing:
            console.print(f"mine-samples: shards {missing} of {n_shards} are still to be mined "
                          f"(run `cldg mine-samples --shard I/{n_shards}` for each); not complete yet")
            return Artifact("samples", run.fingerprint, run.dir, {"schema": SCHEMA, "stage": "samples",
                                                                  "fingerprint": run.fingerprint, "partial": True})
        n_samples, notes = 0, []
        for i in range(n_shards):
            meta = pq.read_metadata(run.dir / shard_name(i, n_shards))
            n_samples += meta.num_rows
            notes += table_notes(meta.schema.to_arrow_schema())
        n_train = pq.read_metadata(prepared.file("pairs-train.parquet")).num_rows
        n_train = min(n_train, cfg.max_pairs) if cfg.max_pairs else n_train
        n_valid = pq.read_metadata(prepared.file("pairs-valid.parquet")).num_rows
        rows = {"samples": n_samples, "queries": n_train + n_valid, "train_queries": n_train,
                "valid_queries": n_valid, "short_groups": len(notes)}
        console.print(f"mine-samples: {n_samples:,} samples for {n_train + n_valid:,} pairs "
                      f"({len(notes)} short groups) with the {cfg.matcher} matcher")
        return run.commit(rows=rows, timings={"mine_s": round(time.time() - t_start, 2)},
                          extra={"short_groups": notes[:1000], "matcher": cfg.matcher, "k": cfg.k,
                                 "num_shards": n_shards, "columns": list(COLUMNS)})


def mine_shards(run_dir: Path, shards: list[int], n_shards: int, cfg: Config, common: CommonOptions,
                prepared, index, inputs: dict) -> None:
    """Mine `shards` into run_dir, each under its own lock, resuming a half-done shard at its last chunk."""
    import fcntl

    from cldg.data.pairs import read_pairs
    from cldg.progress import console, make_progress
    from cldg.retrieval.jvm import start_jvm
    from cldg.retrieval.mining import Query, TrainPool

    train = read_pairs(prepared.file("pairs-train.parquet"))
    valid = read_pairs(prepared.file("pairs-valid.parquet"))
    pool = TrainPool(train.pair_id, train.context, train.response)
    n_train = len(train) if not cfg.max_pairs else min(cfg.max_pairs, len(train))
    queries = [Query("train", train.pair_id[i], train.context[i], train.response[i]) for i in range(n_train)]
    queries += [Query("valid", valid.pair_id[i], valid.context[i], valid.response[i]) for i in range(len(valid))]
    matcher = load_matcher(cfg, inputs, prepared, train, common)
    start_jvm(cfg.java_heap)
    ctx_search, resp_search = open_searchers(index, cfg.threads, cfg.retrieval, pool)
    with make_progress() as progress:
        for s in shards:
            target = run_dir / shard_name(s, n_shards)
            lock = open(run_dir / f".shard-{s:05d}.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                console.print(f"mine-samples: shard {s}/{n_shards} is being mined by another worker - skipped")
                continue
            if target.exists():  # finished by another worker while we were starting up
                lock.close()
                continue
            try:
                mine_one_shard(run_dir, s, n_shards, target, queries, cfg, common, pool, ctx_search, resp_search,
                               matcher, progress)
            finally:  # released even when mining fails, so that a retry in this process can take the shard
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
    ctx_search.close()
    resp_search.close()


def mine_one_shard(run_dir: Path, s: int, n_shards: int, target: Path, queries, cfg: Config, common: CommonOptions,
                   pool, ctx_search, resp_search, matcher, progress) -> None:
    """Mine shard s chunk by chunk (each chunk file a resume point), then merge its chunks into `target`."""
    import os

    import torch

    from cldg.progress import console
    from cldg.retrieval.mining import mine_dual_samples, mine_pipelined, write_samples

    lo, hi = len(queries) * s // n_shards, len(queries) * (s + 1) // n_shards
    task = progress.add_task(f"mine shard {s}/{n_shards}", total=hi - lo, unit="pairs")
    done = sum(min(c + cfg.chunk_size, hi) - c for c in range(lo, hi, cfg.chunk_size)
               if (run_dir / f".shard-{s:05d}-chunk-{c:09d}-{min(c + cfg.chunk_size, hi):09d}.parquet").exists())
    if done:
        console.print(f"mine-samples: resuming shard {s}/{n_shards} from pair {done:,} of {hi - lo:,}")
    chunk_files, todo = [], []
    for c_lo in range(lo, hi, cfg.chunk_size):
        c_hi = min(c_lo + cfg.chunk_size, hi)
        # the name holds both ends, so chunks of a run with another --chunk-size are never reused
        part = run_dir / f".shard-{s:05d}-chunk-{c_lo:09d}-{c_hi:09d}.parquet"
        chunk_files.append(part)
        if part.exists():  # resume at the first unfinished chunk
            progress.update(task, advance=c_hi - c_lo)
        else:
            todo.append((c_lo, c_hi, part))
    args = (pool, ctx_search, resp_search, matcher, cfg.k, cfg.n_candidates, cfg.n_random, common.seed)
    if cfg.overlap:  # scoring leaves a core to the retrieval thread (mine_pipelined)
        results = mine_pipelined([queries[a:b] for a, b, _ in todo], *args,
                                 score_threads=max(1, torch.get_num_threads() - 1))
    else:
        results = (mine_dual_samples(queries[a:b], *args) for a, b, _ in todo)
    for (c_lo, c_hi, part), (cols, notes) in zip(todo, results):
        write_samples(cols, part.with_suffix(".tmp"), notes)
        os.replace(part.with_suffix(".tmp"), part)
        progress.update(task, advance=c_hi - c_lo)
    merge_chunks(chunk_files, target)
    for part in chunk_files:
        part.unlink(missing_ok=True)


def open_searchers(index, threads: int, backend: str = "lucene", pool=None):
    """BM25 searchers over the index's contexts and responses (the JVM must be running: pyserini imports here).

    backend numpy: the same BM25 over the texts the index was built from, `pool` (the prepare artifact's
    train pairs, as `cldg index` indexed them)."""
    from cldg.retrieval.search import BM25Searcher

    bm25 = index.manifest.get("bm25", {"k1": 0.9, "b": 0.4})
    pretokenized = index.manifest.get("language") == "pretokenized"
    if backend == "numpy":
        from cldg.retrieval.bm25_index import context_text
        from cldg.retrieval.sparse import SparseBM25Searcher

        return (SparseBM25Searcher(pool.pair_ids, [context_text(c) for c in pool.contexts], bm25["k1"], bm25["b"],
                                   pretokenized, threads),
                SparseBM25Searcher(pool.pair_ids, pool.responses, bm25["k1"], bm25["b"], pretokenized, threads))
    return (BM25Searcher(index.file("contexts"), bm25["k1"], bm25["b"], threads, pretokenized),
            BM25Searcher(index.file("responses"), bm25["k1"], bm25["b"], threads, pretokenized))


def merge_chunks(parts: list[Path], target: Path) -> None:
    """Concatenate a shard's chunk files into the shard file, atomically."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cldg.retrieval.mining import COLUMNS, samples_table, table_notes

    tables = [pq.read_table(p) for p in parts]
    notes = [n for t in tables for n in table_notes(t)]
    table = pa.concat_tables([samples_table({c: [] for c in COLUMNS})] + tables)
    tmp = target.with_name("." + target.name + ".tmp")  # a dot name: never part of a committed artifact
    pq.write_table(table.replace_schema_metadata(samples_table({c: [] for c in COLUMNS}, notes).schema.metadata), tmp)
    os.replace(tmp, target)


def load_matcher(cfg: Config, inputs: dict, prepared, train, common):
    from cldg.text.tokenizer import DialogueTokenizer

    if cfg.matcher == "bm25":
        from cldg.matching.bm25 import BM25Matcher

        tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
        return BM25Matcher(tok.words, train.response)
    from cldg.matching.msn import load_msn_matcher
    from cldg.runtime import resolve_device

    return load_msn_matcher(inputs["matcher"].path, resolve_device(common.device), batch_size=cfg.score_batch_size)

