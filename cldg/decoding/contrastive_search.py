"""Contrastive search (Su et al., 2022), the decoding that goes with SimCTG, for `hf:` models (cldg/models/hf.py).

At each step, among the k most probable tokens v:
    x_t = argmax_v  (1 - alpha) p(v | x_<t)  -  alpha max_{j < t} s(h_v, h_{x_j})
with s the cosine between last-layer states: h_v is the state after reading v, h_{x_j} the states of the
prefix (the prompt and what was generated; for an encoder-decoder, the decoder's prefix). alpha = 0 is
greedy decoding. No KV cache: every step re-reads the k candidate sequences (fine for evaluation-sized runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_scores(cand_probs: torch.Tensor, cand_hidden: torch.Tensor, prev_hidden: torch.Tensor,
                       prev_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) p(v) - alpha max_j cos(h_v, h_j) over the real prefix positions.
    cand_probs [B, k], cand_hidden [B, k, H], prev_hidden [B, L, H], prev_mask [B, L] -> [B, k]."""
    sim = F.normalize(cand_hidden.float(), dim=-1) @ F.normalize(prev_hidden.float(), dim=-1).transpose(1, 2)
    sim = sim.masked_fill(~prev_mask.bool().unsqueeze(1), float("-inf"))
    degeneration = sim.max(-1).values
    return (1 - alpha) * cand_probs.float() - alpha * degeneration


@torch.no_grad()
def contrastive_search(model, contexts: list[list[str]], k: int = 4, alpha: float = 0.6,
                       max_len: int = 30, min_len: int = 0) -> list[list[int]]:
    """Response token ids per context (EOS stripped) for an HFDialogueModel; EOS cannot end a response shorter
    than `min_len` tokens (its probability 0 before the top k are taken, as transformers' min_new_tokens)."""
    from cldg.models.hf import _pad_rows

    model.eval()
    hf, device, B = model.hf, model.device, len(contexts)
    prompts = [model.encode_context(c) for c in contexts]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if model.is_encoder_decoder:
        from transformers.modeling_outputs import BaseModelOutput

        enc_ids, enc_mask = (t.to(device) for t in _pad_rows(prompts, model.pad_id, left=False))
        with autocast:
            encoded = hf.get_encoder()(input_ids=enc_ids, attention_mask=enc_mask.long()).last_hidden_state
        start = hf.config.decoder_start_token_id
        seq = torch.full((B, 1), model.pad_id if start is None else start, dtype=torch.long, device=device)
        seq_mask = torch.ones_like(seq, dtype=torch.bool)
    else:
        seq, seq_mask = (t.to(device) for t in _pad_rows(prompts, model.pad_id, left=True))

    def run(ids, mask, rows):
        """Next-token logits [R, V] and the last layer's states [R, L, H] of each row."""
        with autocast:
            if model.is_encoder_decoder:
                out = hf(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[rows]),
                         attention_mask=enc_mask[rows].long(), decoder_input_ids=ids, output_hidden_states=True,
                         use_cache=False)
                return out.logits[:, -1].float(), out.decoder_hidden_states[-1].float()
            positions = (mask.long().cumsum(1) - 1).clamp_min(0)
            out = hf(input_ids=ids, attention_mask=mask.long(), position_ids=positions, output_hidden_states=True,
                     use_cache=False)
            return out.logits[:, -1].float(), out.hidden_states[-1].float()

    rows = torch.arange(B, device=device)
    stops = list(getattr(model, "eos_ids", [model.eos_id]))  # EOS, the generation config's, the end of turn
    logits, hidden = run(seq, seq_mask, rows)
    generated = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_len):
        if step < min_len:
            logits[:, stops] = float("-inf")
        top_p, top_v = F.softmax(logits, -1).topk(k, dim=-1)                           # [B, k]
        cand = torch.cat([seq.repeat_interleave(k, 0), top_v.reshape(-1, 1)], 1)
        cand_mask = torch.cat([seq_mask.repeat_interleave(k, 0), torch.ones_like(top_v.reshape(-1, 1), dtype=torch.bool)], 1)
        c_logits, c_hidden = run(cand, cand_mask, rows.repeat_interleave(k))
        scores = contrastive_scores(top_p, c_hidden[:, -1].view(B, k, -1), hidden, seq_mask, alpha)
        pick = rows * k + scores.argmax(-1)
        seq, seq_mask, logits, hidden = cand[pick], cand_mask[pick], c_logits[pick], c_hidden[pick]
        for b, token in enumerate(seq[:, -1].tolist()):
            if not done[b]:
                if token in stops:
                    done[b] = True
                else:
                    generated[b].append(token)
        if bool(done.all()):
            break
    return generated
