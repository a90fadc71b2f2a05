"""The frozen reference's log p_n(r|c) for every mined sequence, computed once and kept on disk.

The `contrastive-train` stage makes it its own artifact (`WORKDIR/refcache/<fingerprint>/logprobs.parquet`,
columns ctx_pid, resp_pid, logp), fingerprinted by the reference and samples it came from and the
precision it was computed in, so contrastive training (and every ablation rerun) never runs the
reference again. This module computes, writes and reads the numbers; it knows nothing of the store.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cldg.training.checkpoint import atomic_write


RESUME_DIR = "resume-logp"  # chunks done so far, in the artifact's .partial/ (resume state, removed at commit)
CHUNK_BATCHES = 64  # batches per saved chunk (16,384 sequences at the default batch of 256): little work lost to a kill


def sequence_logprobs(model, text, seqs: list[tuple[int, int]], batch_size: int, device, progress=None,
                      task=None, resume_dir: Path | None = None, chunk_batches: int | None = None) -> list[float]:
    """log p(r|c) of each (context id, response id) under `model` (eval mode), batched by length. `text` is a
    cldg.training.groups.TextIndex, or for an hf: model a recipes.hf_contrastive.HFTextIndex (text batches).

    With `resume_dir`, every `chunk_batches` (default CHUNK_BATCHES) batches are saved there as they finish,
    and a rerun loads the chunks already saved instead of computing them (full chitchat on 2 CPU cores: 1.6M
    sequences, 34 min measured). The batches are the same whether a chunk is computed or loaded, so a resumed
    cache equals an uninterrupted one bit for bit; the folder is named by the batch layout, so a rerun with
    another batch size starts afresh."""
    import numpy as np

    order = sorted(range(len(seqs)), key=lambda i: (len(text.context(seqs[i][0])[0]), len(text.response(seqs[i][1]))))
    out = [0.0] * len(seqs)
    chunk_batches = chunk_batches or CHUNK_BATCHES
    chunk = batch_size * chunk_batches
    folder = Path(resume_dir) / f"b{batch_size}x{chunk_batches}" if resume_dir is not None else None
    done = 0
    for c, lo in enumerate(range(0, len(order), chunk)):
        idx = order[lo:lo + chunk]
        part = folder / f"{c:05d}.npy" if folder is not None else None
        values = np.load(part) if part is not None and part.is_file() else None
        if values is None or len(values) != len(idx):
            values = np.asarray(_ordered_logprobs(model, text, [seqs[i] for i in idx], batch_size, device, progress,
                                                  task), dtype=np.float64)
            if part is not None:  # atomic: a kill mid-write leaves no half chunk to resume from
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(part, lambda tmp: _save_npy(tmp, values))
        else:
            done += len(idx)
            if progress is not None:
                progress.advance(task, len(idx))
        for i, v in zip(idx, values.tolist()):
            out[i] = v
    if done and progress is not None:
        progress.console.print(f"refcache: resumed {done:,} of {len(seqs):,} sequences from an interrupted run")
    return out


def _save_npy(path: Path, values) -> None:
    import numpy as np

    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a temp name
        np.save(fh, values)


@torch.inference_mode()
def _ordered_logprobs(model, text, seqs: list[tuple[int, int]], batch_size: int, device, progress=None,
                      task=None) -> list[float]:
    """log p(r|c) of `seqs` in the order given (already sorted by length), `batch_size` at a time."""
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob

    model.eval()
    out: list[float] = []
    for start in range(0, len(seqs), batch_size):
        batch = text.batch(seqs[start:start + batch_size]).to(device)
        if hasattr(model, "make_batch"):  # an hf: model: text in, log p(r|c) in its own tokens out (bf16 on CUDA)
            lp = model.sequence_logprobs(model.make_batch(batch.contexts, batch.responses)).float().cpu().tolist()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch)
            lp = sequence_logprob(logits, batch.response_out, PAD).float().cpu().tolist()
        out += lp
        if progress is not None:
            progress.advance(task, len(lp))
    return out


def precision(device) -> str:
    """bf16 on CUDA and fp32 on the CPU give log-probs a little apart: a cache made one way must not serve
    training run the other way, or D = log p_target - log p_ref starts away from 0 (so it is fingerprinted)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def write_reference_cache(path: Path, seqs: list[tuple[int, int]], logp: list[float]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"ctx_pid": pa.array([s[0] for s in seqs], pa.int64()),
                             "resp_pid": pa.array([s[1] for s in seqs], pa.int64()),
                             "logp": pa.array(logp, pa.float32())}), path)


def load_reference_cache(artifact) -> dict[tuple[int, int], float]:
    """{(context id, response id): log p} of a refcache artifact (anything with `.file(name)`)."""
    import pyarrow.parquet as pq

    t = pq.read_table(artifact.file("logprobs.parquet")).to_pydict()
    return {(c, r): v for c, r, v in zip(t["ctx_pid"], t["resp_pid"], t["logp"])}
