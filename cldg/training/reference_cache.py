"""The frozen reference's log p_n(r|c) for every mined sequence, computed once and kept on disk.

The `contrastive-train` stage makes it its own artifact (`WORKDIR/refcache/<fingerprint>/logprobs.parquet`,
columns ctx_pid, resp_pid, logp), fingerprinted by the reference and samples it came from and the
precision it was computed in, so contrastive training (and every ablation rerun) never runs the
reference again. This module computes, writes and reads the numbers; it knows nothing of the store.
"""
from __future__ import annotations

from pathlib import Path

import torch


@torch.inference_mode()
def sequence_logprobs(model, text, seqs: list[tuple[int, int]], batch_size: int, device, progress=None,
                      task=None) -> list[float]:
    """log p(r|c) of each (context id, response id) under `model` (eval mode), batched by length. `text` is a
    cldg.training.groups.TextIndex, or for an hf: model a recipes.hf_contrastive.HFTextIndex (text batches)."""
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob

    model.eval()
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: (len(text.context(seqs[i][0])[0]), len(text.response(seqs[i][1]))))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = text.batch([seqs[i] for i in idx]).to(device)
        if hasattr(model, "make_batch"):  # an hf: model: text in, log p(r|c) in its own tokens out (bf16 on CUDA)
            lp = model.sequence_logprobs(model.make_batch(batch.contexts, batch.responses)).float().cpu().tolist()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch)
            lp = sequence_logprob(logits, batch.response_out, PAD).float().cpu().tolist()
        for i, v in zip(idx, lp):
            out[i] = v
        if progress is not None:
            progress.advance(task, len(idx))
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
