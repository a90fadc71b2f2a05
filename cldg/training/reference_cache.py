"""The frozen reference's log p_n(r|c) for every mined sequence, computed once and kept on disk.

It is its own artifact (`WORKDIR/refcache/<fingerprint>/logprobs.parquet`, columns ctx_pid,
resp_pid, logp), fingerprinted by the reference and samples it came from, so contrastive training
(and every ablation rerun) never runs the reference again. The precision it was computed in (bf16 on
CUDA, fp32 on the CPU) is part of the fingerprint.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch

from cldg.artifacts import Artifact, ArtifactStore

SCHEMA = 1


@torch.inference_mode()
def sequence_logprobs(model, text, seqs: list[tuple[int, int]], batch_size: int, device, progress=None,
                      task=None) -> list[float]:
    """log p(r|c) of each (context id, response id) under `model` (eval mode), batched by length."""
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import sequence_logprob

    model.eval()
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: (len(text.context(seqs[i][0])[0]), len(text.response(seqs[i][1]))))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = text.batch([seqs[i] for i in idx]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch)
        lp = sequence_logprob(logits, batch.response_out, PAD).float().cpu().tolist()
        for i, v in zip(idx, lp):
            out[i] = v
        if progress is not None:
            progress.advance(task, len(idx))
    return out


def build_reference_cache(store: ArtifactStore, reference: Artifact, samples: Artifact, limits_config: dict,
                          reference_model, text, seqs: Iterable[tuple[int, int]], batch_size: int, device,
                          force: bool = False) -> Artifact:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cldg.progress import console, make_progress

    seqs = sorted(set(seqs))
    # bf16 on CUDA and fp32 on the CPU give log-probs a little apart: a cache made one way must not serve
    # training run the other way, or D = log p_target - log p_ref starts away from 0
    precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    with store.begin("refcache", SCHEMA, {"limits": limits_config, "precision": precision},
                     {"reference": reference, "samples": samples},
                     force=force) as run:
        if run.existing:
            return run.existing
        t0 = time.time()
        with make_progress() as progress:
            task = progress.add_task("reference log p (once)", total=len(seqs), unit="seqs")
            logp = sequence_logprobs(reference_model, text, seqs, batch_size, device, progress, task)
        pq.write_table(pa.table({"ctx_pid": pa.array([s[0] for s in seqs], pa.int64()),
                                 "resp_pid": pa.array([s[1] for s in seqs], pa.int64()),
                                 "logp": pa.array(logp, pa.float32())}), run.dir / "logprobs.parquet")
        seconds = time.time() - t0
        console.print(f"refcache: {len(seqs):,} reference log-probs in {seconds:.1f} s")
        return run.commit(rows={"sequences": len(seqs)}, timings={"compute_s": round(seconds, 3)})


def load_reference_cache(artifact: Artifact) -> dict[tuple[int, int], float]:
    import pyarrow.parquet as pq

    t = pq.read_table(artifact.file("logprobs.parquet")).to_pydict()
    return {(c, r): v for c, r, v in zip(t["ctx_pid"], t["resp_pid"], t["logp"])}
