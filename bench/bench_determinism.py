"""What the deterministic mode costs: training steps with torch's deterministic algorithms on vs off, and
fastText with one worker (what the mode uses) vs two.

    .venv/bin/python bench/bench_determinism.py --prepare-dir cldg-work/chitchat-demo/prepare/latest \
        [--steps 30] [--repeats 3]

Each measurement alternates the two settings `--repeats` times (so that a busy machine slows both alike)
and reports the median. Model: the demo's seq2seq (1 layer, 128 hidden, 64-d embeddings), batch 64.
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def train_steps(prepared, steps: int, deterministic: bool) -> float:
    """Seconds for `steps` MLE steps of the demo's seq2seq."""
    import torch

    from cldg.data.batching import Limits
    from cldg.models import build_model
    from cldg.stages.pretrain import load_split
    from cldg.text.tokenizer import PAD, DialogueTokenizer
    from cldg.training.losses import nll_loss

    from cldg.runtime import configure_runtime

    configure_runtime(deterministic, torch.get_num_threads())  # exactly what a stage does
    torch.manual_seed(0)
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    limits = Limits(3, 40, 120, 40)
    pairs = load_split(prepared, "train", tok, limits, 64 * steps, 0)
    model = build_model("seq2seq", tok.vocab_size, embedding_dim=64, hidden_size=128, num_layers=1, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    batches = list(pairs.iter_batches(64, 0, 0))[:steps]
    t0 = time.perf_counter()
    for batch in batches:
        loss, _ = nll_loss(model(batch), batch.response_out, PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def fasttext_seconds(prepared, workers: int) -> float:
    from cldg.data.pairs import read_pairs
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.text.vectors import train_fasttext

    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    t = read_pairs(prepared.file("pairs-train.parquet"))
    sentences = [tok.words(r) for r in t.response]
    t0 = time.perf_counter()
    train_fasttext(sentences, 64, 5, 13, workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare-dir", type=Path, default=Path("cldg-work/chitchat-demo/prepare/latest"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from cldg.artifacts import Artifact

    prepared = Artifact.load(args.prepare_dir)
    train_steps(prepared, 3, False)  # warm-up
    on, off, one, two = [], [], [], []
    for _ in range(args.repeats):
        off.append(train_steps(prepared, args.steps, False))
        on.append(train_steps(prepared, args.steps, True))
        two.append(fasttext_seconds(prepared, 2))
        one.append(fasttext_seconds(prepared, 1))
    med = statistics.median
    print(json.dumps({
        "torch_threads": torch.get_num_threads(),
        "train_steps": args.steps,
        "train_s_default": round(med(off), 3),
        "train_s_deterministic": round(med(on), 3),
        "deterministic_cost": round(med(on) / med(off) - 1, 3),
        "fasttext_s_2_workers": round(med(two), 3),
        "fasttext_s_1_worker": round(med(one), 3),
        "fasttext_one_worker_cost": round(med(one) / med(two) - 1, 3),
        "repeats": args.repeats,
    }, indent=2))


if __name__ == "__main__":
    main()
