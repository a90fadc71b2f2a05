"""Dialogues -> (context, response) pairs, split by dialogue, with the paper's Table-1 statistics."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from cldg.data.loaders import Dialogue

SPLITS = ("train", "valid", "test")


@dataclass
class PairTable:
    """Column-wise pairs of one split (the parquet schema of docs/internals.md)."""

    pair_id: list[int] = field(default_factory=list)
    dialogue_id: list[str] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    context: list[list[str]] = field(default_factory=list)
    response: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pair_id)


@dataclass
class CleanStats:
    dialogues_in: int = 0
    empty_turns_dropped: int = 0
    short_dialogues_dropped: int = 0  # fewer than two turns: no pair
    renamed_duplicate_ids: int = 0  # a dialogue id seen before gets a '#k' suffix: ids stay unique


def clean_dialogues(dialogues: Iterable[Dialogue], stats: CleanStats) -> list[Dialogue]:
    """Drop empty turns (counted) and dialogues left with fewer than two turns (counted); make ids
    unique, since the split and every later stage tell dialogues apart by id."""
    kept = []
    seen: Counter = Counter()
    for d in dialogues:
        stats.dialogues_in += 1
        turns = [t for t in d.turns if t]
        stats.empty_turns_dropped += len(d.turns) - len(turns)
        if len(turns) < 2:
            stats.short_dialogues_dropped += 1
            continue
        did = d.id
        seen[d.id] += 1
        if seen[d.id] > 1:
            did = f"{d.id}#{seen[d.id]}"
            stats.renamed_duplicate_ids += 1
        kept.append(Dialogue(did, turns, d.pair_only))
    return kept


def pairs_in(d: Dialogue) -> int:
    return 1 if d.pair_only else len(d.turns) - 1


def subset_dialogues(dialogues: list[Dialogue], max_dialogues: int, max_pairs: int, seed: int) -> list[Dialogue]:
    """A seeded subset of whole dialogues: at most `max_dialogues` of them and at most `max_pairs`
    pairs in all (0 = no cap). Whole dialogues, so the later split stays by dialogue."""
    if not max_dialogues and not max_pairs:
        return dialogues
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    kept, n_pairs = [], 0
    for i in order:
        if max_dialogues and len(kept) >= max_dialogues:
            break
        if max_pairs and n_pairs + pairs_in(dialogues[i]) > max_pairs:
            continue  # too long for what is left of the budget: a shorter one may still fit
        kept.append(dialogues[i])
        n_pairs += pairs_in(dialogues[i])
    return kept


def split_dialogues(dialogues: list[Dialogue], valid_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, list[Dialogue]]:
    """Seeded split by dialogue (never by pair), so no context of a test pair is seen in training."""
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    if n >= 3:  # every split gets at least one dialogue when there are enough
        n_test, n_valid = max(n_test, 1), max(n_valid, 1)
    test = [dialogues[i] for i in order[:n_test]]
    valid = [dialogues[i] for i in order[n_test:n_test + n_valid]]
    train = [dialogues[i] for i in order[n_test + n_valid:]]
    return {"train": train, "valid": valid, "test": test}


def make_pairs(splits: dict[str, list[Dialogue]], max_context_turns: int) -> dict[str, PairTable]:
    """A pair per turn after the first: context = up to `max_context_turns` earlier turns."""
    tables = {s: PairTable() for s in SPLITS}
    next_id = 0
    for split in SPLITS:
        t = tables[split]
        for d in splits[split]:
            first = len(d.turns) - 1 if d.pair_only else 1
            for i in range(first, len(d.turns)):
                t.pair_id.append(next_id)
                t.dialogue_id.append(d.id)
                t.turn.append(i)
                t.context.append(d.turns[max(0, i - max_context_turns):i])
                t.response.append(d.turns[i])
                next_id += 1
    return tables


def corpus_statistics(splits: dict[str, list[Dialogue]], tables: dict[str, PairTable], word_count,
                      vocab_size: int) -> dict:
    """The paper's Table 1 (pairs, avg turns per context, avg words per utterance, split sizes, vocab)
    and the duplicates a user should know about (reported, not removed).

    Words per utterance: every turn of every kept dialogue counts once (a turn that appears in several
    contexts is not counted again), with the tokenizer's word split.
    """
    n_pairs = sum(len(t) for t in tables.values())
    ctx_turns = [len(c) for t in tables.values() for c in t.context]
    n_utt = n_words = 0
    for dialogues in splits.values():
        for d in dialogues:
            n_utt += len(d.turns)
            n_words += sum(word_count(u) for u in d.turns)
    train = tables["train"]
    train_keys = Counter(zip(map(tuple, train.context), train.response))
    heldout_in_train = sum(1 for s in ("valid", "test") for k in zip(map(tuple, tables[s].context), tables[s].response)
                           if k in train_keys)
    dialogue_keys = Counter(tuple(d.turns) for ds in splits.values() for d in ds)
    return {
        "pairs": n_pairs,
        "train_pairs": len(train),
        "valid_pairs": len(tables["valid"]),
        "test_pairs": len(tables["test"]),
        "train_dialogues": len(splits["train"]),
        "valid_dialogues": len(splits["valid"]),
        "test_dialogues": len(splits["test"]),
        "avg_turns_per_context": round(sum(ctx_turns) / max(len(ctx_turns), 1), 3),
        "avg_words_per_utterance": round(n_words / max(n_utt, 1), 3),
        "vocabulary": vocab_size,
        # a (context, response) pair seen more than once in train, beyond its first occurrence
        "duplicate_train_pairs": sum(n - 1 for n in train_keys.values() if n > 1),
        # valid/test pairs whose exact (context, response) also occurs in train (generic exchanges)
        "heldout_pairs_seen_in_train": heldout_in_train,
        # dialogues whose whole turn sequence occurs more than once in the corpus, beyond the first
        "duplicate_dialogues": sum(n - 1 for n in dialogue_keys.values() if n > 1),
    }


def write_pairs_parquet(table: PairTable, path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa_table = pa.table({
        "pair_id": pa.array(table.pair_id, pa.int64()),
        "dialogue_id": pa.array(table.dialogue_id, pa.string()),
        "turn": pa.array(table.turn, pa.int32()),
        "context": pa.array(table.context, pa.list_(pa.string())),
        "response": pa.array(table.response, pa.string()),
    })
    pq.write_table(pa_table, path)


def read_pairs(path) -> PairTable:
    """Read a pairs parquet file back into columns."""
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    return PairTable(t["pair_id"], t["dialogue_id"], t["turn"], t["context"], t["response"])
