"""Group-wise dual sampling (Cai et al., 2020, section 2.3).

For a pair (c, r):
- response side: BM25-search the context index with c; the responses r_j of the hits (the pair itself
  and responses identical to r removed), plus `n_random` random training responses, are scored by the
  matcher as (c, r_j); the k highest are r+, the k lowest r-.
- context side: BM25-search the response index with r; the contexts c_j of the hits (plus random
  ones) are scored as (c_j, r); the k highest are c+, the k lowest c-.
Weights: s+ = matcher probability (floored at 1e-6 so that log s+ stays finite), s- = probability - 1.
Candidates always come from the training split, each text at most once (a corpus repeats short
responses like "ok"; a group of three identical r+ would be one sample counted thrice). Random
candidates are drawn from a generator seeded by (seed, pair id, side), so a pair's samples do not
depend on how the work is sharded or chunked. Positives are ranked best first, negatives worst first.
When fewer than 2k candidates remain (a tiny corpus), a group keeps floor(candidates / 2) of each
polarity - positives and negatives never overlap - and a note records why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cldg.retrieval.bm25_index import context_text

POS_FLOOR = 1e-6
COLUMNS = ("split", "pair_id", "side", "polarity", "rank", "cand_pair_id", "matcher_prob", "weight")


@dataclass
class Query:
    split: str
    pair_id: int
    context: list[str]
    response: str


@dataclass
class TrainPool:
    """The training pairs candidates are drawn from."""

    pair_ids: list[int]
    contexts: list[list[str]]
    responses: list[str]
    row_of: dict[int, int] = field(init=False)

    def __post_init__(self):
        self.row_of = {p: i for i, p in enumerate(self.pair_ids)}
        self._resp_key = [r.lower() for r in self.responses]
        self._ctx_key = [context_text(c).lower() for c in self.contexts]


def _candidates(hits: list[tuple[int, float]], pool: TrainPool, self_id: int, same_key: str, keys: list[str],
                n_candidates: int, n_random: int, rng: np.random.Generator) -> list[int]:
    """Rows of `pool`: BM25 hits then random rows; no self, nothing identical to the query's own text."""
    rows: list[int] = []
    seen_text: set[str] = {same_key}

    def take(row: int) -> bool:
        key = keys[row]
        if key in seen_text or pool.pair_ids[row] == self_id:
            return False
        seen_text.add(key)
        rows.append(row)
        return True

    for pid, _ in hits:
        row = pool.row_of.get(pid)
        if row is not None and take(row) and len(rows) >= n_candidates:
            break
    if n_random:
        want = len(rows) + n_random
        for row in rng.choice(len(pool.pair_ids), size=min(len(pool.pair_ids), n_random * 2 + 4), replace=False):
            if len(rows) >= want:
                break
            take(int(row))
    return rows


def _select(rows: list[int], probs: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Indices into rows of the k best (best first) and the k worst (worst first), never overlapping."""
    order = np.argsort(-probs, kind="stable")
    k_eff = min(k, len(rows) // 2)
    return list(order[:k_eff]), list(order[::-1][:k_eff])


def mine_dual_samples(queries: Sequence[Query], pool: TrainPool, context_searcher, response_searcher, matcher,
                      k: int, n_candidates: int, n_random: int, seed: int) -> tuple[dict[str, list], list[str]]:
    """The samples of `queries` in the long format (columns COLUMNS) and a note per short group."""
    chunk = plan_chunk(queries, pool, context_searcher, response_searcher, n_candidates, n_random, seed)
    return select_samples(chunk, pool, score_chunk(chunk, matcher), k)


@dataclass
class ChunkPlan:
    """A chunk's candidates: (query, side, candidate rows) per group, and the (context, response) pairs to score."""

    plans: list[tuple[Query, str, list[int]]]
    contexts: list[list[str]]
    responses: list[str]
    encoded: object = None  # the matcher's own encoding of the pairs (MSNMatcher.encode), when done ahead


def plan_chunk(queries: Sequence[Query], pool: TrainPool, context_searcher, response_searcher, n_candidates: int,
               n_random: int, seed: int) -> ChunkPlan:
    """Retrieval and candidate lists of a chunk (no matcher): what a producer thread can do ahead of scoring."""
    slack = n_candidates + 10  # room for the hits that are removed (self, duplicates)
    ctx_hits = context_searcher.batch_search([context_text(q.context) for q in queries], slack)
    resp_hits = response_searcher.batch_search([q.response for q in queries], slack)

    plans = []  # (query, side, candidate rows)
    for q, ch, rh in zip(queries, ctx_hits, resp_hits):
        rng_r = np.random.default_rng([seed, q.pair_id, 0])
        rng_c = np.random.default_rng([seed, q.pair_id, 1])
        plans.append((q, "response", _candidates(ch, pool, q.pair_id, q.response.lower(), pool._resp_key,
                                                 n_candidates, n_random, rng_r)))
        plans.append((q, "context", _candidates(rh, pool, q.pair_id, context_text(q.context).lower(), pool._ctx_key,
                                                n_candidates, n_random, rng_c)))

    # one matcher call for every (context, response) pair of the chunk
    contexts, responses = [], []
    for q, side, rows in plans:
        for row in rows:
            if side == "response":
                contexts.append(q.context)
                responses.append(pool.responses[row])
            else:
                contexts.append(pool.contexts[row])
                responses.append(q.response)
    return ChunkPlan(plans, contexts, responses)


def encode_chunk(chunk: ChunkPlan, matcher) -> ChunkPlan:
    """Tokenize the chunk's pairs ahead of scoring when the matcher can (MSNMatcher.encode / score_ids)."""
    if chunk.contexts and hasattr(matcher, "encode") and hasattr(matcher, "score_ids"):
        chunk.encoded = matcher.encode(chunk.contexts, chunk.responses)
    return chunk


def score_chunk(chunk: ChunkPlan, matcher) -> np.ndarray:
    if not chunk.contexts:
        return np.zeros(0, np.float32)
    if chunk.encoded is not None:
        return matcher.score_ids(chunk.encoded)
    return matcher.score(chunk.contexts, chunk.responses)


def select_samples(chunk: ChunkPlan, pool: TrainPool, probs_all: np.ndarray, k: int) -> tuple[dict[str, list], list[str]]:
    """The k best and k worst candidates of each group, in the long format, and the short-group notes."""
    out: dict[str, list] = {c: [] for c in COLUMNS}
    notes = []
    offset = 0
    for q, side, rows in chunk.plans:
        probs = np.asarray(probs_all[offset:offset + len(rows)], dtype=np.float64)
        offset += len(rows)
        pos, neg = _select(rows, probs, k)
        if len(pos) < k:
            notes.append(f"{q.split} pair {q.pair_id} {side} side: {len(rows)} candidates, "
                         f"{len(pos)} of {k} per polarity (corpus too small)")
        for polarity, picks in (("pos", pos), ("neg", neg)):
            for rank, i in enumerate(picks):
                p = float(np.clip(probs[i], 0.0, 1.0))
                out["split"].append(q.split)
                out["pair_id"].append(q.pair_id)
                out["side"].append(side)
                out["polarity"].append(polarity)
                out["rank"].append(rank)
                out["cand_pair_id"].append(pool.pair_ids[rows[i]])
                out["matcher_prob"].append(p)
                out["weight"].append(max(p, POS_FLOOR) if polarity == "pos" else p - 1.0)
    return out, notes


def mine_pipelined(chunks: Sequence[Sequence[Query]], pool: TrainPool, context_searcher, response_searcher, matcher,
                   k: int, n_candidates: int, n_random: int, seed: int, depth: int = 1,
                   score_threads: int | None = None):
    """Yield mine_dual_samples(chunk, ...) for each chunk, in order, with retrieval overlapped with scoring.

    A producer thread retrieves, builds the candidate lists and tokenizes chunk i+1 (up to `depth` chunks
    ahead) while this thread scores chunk i with the matcher: the JVM's search threads and numpy release
    the GIL for much of their work, torch for its kernels. Same rows as the sequential loop: every chunk
    is planned and scored exactly as mine_dual_samples does it (random draws are seeded per pair).
    `score_threads`: torch's CPU threads while this runs (restored after), so that scoring leaves the
    retrieval thread a core: torch's thread pool spins at its barriers, and a core taken by another
    thread stalls all of it (measured on 2 cores: MSN scoring at 2 threads beside a busy thread ran ~15x
    slower than at 1). MSN's scores were bit-identical at 1 and 2 threads (bench/bench_mining.py checks
    the rows).
    """
    import queue
    import threading

    import torch

    threads_before = torch.get_num_threads()
    if score_threads:
        torch.set_num_threads(score_threads)

    handoff: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for qs in chunks:
                if stop.is_set():
                    return
                plan = encode_chunk(plan_chunk(qs, pool, context_searcher, response_searcher, n_candidates,
                                               n_random, seed), matcher)
                while not stop.is_set():
                    try:
                        handoff.put(("ok", plan), timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, raised there
            handoff.put(("error", exc))
            return
        finally:
            _detach_jvm_thread()
        handoff.put(("done", None))

    worker = threading.Thread(target=produce, name="cldg-mine-retrieval", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield select_samples(item, pool, score_chunk(item, matcher), k)
    finally:
        stop.set()
        if score_threads:
            torch.set_num_threads(threads_before)
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                handoff.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.1)


def _detach_jvm_thread() -> None:
    """A thread that called into the JVM (pyjnius attaches it) must detach before it ends."""
    import sys

    if "jnius" in sys.modules:
        try:
            sys.modules["jnius"].detach()
        except Exception:  # never attached, or no JVM: nothing to undo
            pass


NOTES_KEY = b"cldg.short_groups"


def samples_table(columns: dict[str, list], notes: Sequence[str] = ()):
    """The long-format pyarrow table; `notes` (why some groups are short) ride in the schema metadata."""
    import json

    import pyarrow as pa

    table = pa.table({
        "split": pa.array(columns["split"], pa.string()),
        "pair_id": pa.array(columns["pair_id"], pa.int64()),
        "side": pa.array(columns["side"], pa.string()),
        "polarity": pa.array(columns["polarity"], pa.string()),
        "rank": pa.array(columns["rank"], pa.int16()),
        "cand_pair_id": pa.array(columns["cand_pair_id"], pa.int64()),
        "matcher_prob": pa.array(columns["matcher_prob"], pa.float32()),
        "weight": pa.array(columns["weight"], pa.float32()),
    })
    return table.replace_schema_metadata({NOTES_KEY: json.dumps(list(notes)).encode()})


def write_samples(columns: dict[str, list], path, notes: Sequence[str] = ()) -> None:
    import pyarrow.parquet as pq

    pq.write_table(samples_table(columns, notes), path)


def table_notes(table_or_schema) -> list[str]:
    """The short-group notes stored with a shard (see samples_table)."""
    import json

    meta = table_or_schema.schema.metadata if hasattr(table_or_schema, "schema") else table_or_schema.metadata
    return json.loads(meta[NOTES_KEY]) if meta and NOTES_KEY in meta else []


def read_samples(directory) -> dict[str, list]:
    """Every shard of a samples artifact, concatenated, as columns."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(Path(directory).glob("shard-*.parquet"))
    if not shards:
        return {c: [] for c in COLUMNS}
    return pa.concat_tables([pq.read_table(s) for s in shards]).to_pydict()
