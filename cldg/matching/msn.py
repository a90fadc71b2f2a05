"""MSN: Multi-hop Selector Network (Yuan et al., 2019) for context-response matching.

1. Words are embedded (initialised from the prepare stage's vectors) and projected to `hidden`.
2. Attentive modules (Transformer-style blocks) self-attend every utterance and the response, one
   layer per hop: U^0 (embeddings), U^1 .. U^H.
3. Multi-hop selector: hop l uses as key the words of the last l utterances at layer l. Each utterance
   gets a word-level relevance (mean over its words of the best scaled dot product with a key word)
   and an utterance-level relevance (cosine of mean vectors); the two are fused with learned weights,
   the hops are combined with learned softmax weights, and utterances below the threshold gamma are
   dropped (weight 0); the others are scaled by their relevance.
4. Six matching channels between each selected utterance and the response: embeddings, self-attended
   (last layer) and cross-attended representations, each compared by a FULL bilinear form x^T W y and
   by cosine. (The public MSN code multiplied by a diagonal only; the paper's form is the full matrix,
   which is what is used here.)
5. A 3-layer CNN turns each [6, Lu, Lr] image into a vector, a GRU aggregates the utterances in
   order, and a linear layer + sigmoid gives the matching probability.

Padding never changes a score: attention is masked, padded cells of the images are zeroed after every
convolution, pooling keeps partial windows (ceil_mode) and the final pooling is a masked max and mean,
and the utterance GRU runs over the real turns only. So batches can be trimmed to their longest row.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cldg.text.tokenizer import PAD


@dataclass
class MSNConfig:
    vocab_size: int = 20000
    embedding_dim: int = 300
    hidden: int = 128
    hops: int = 3
    gamma: float = 0.3
    heads: int = 4
    cnn_channels: int = 16
    gru_hidden: int = 128
    dropout: float = 0.1
    max_turns: int = 5
    max_turn_len: int = 40
    max_response_len: int = 40


class AttentiveModule(nn.Module):
    """Multi-head attention + feed-forward, residual and layer norm (the MSN/DAM attentive module)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm2 = nn.LayerNorm(d)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_pad: torch.Tensor) -> torch.Tensor:
        all_pad = kv_pad.all(-1, keepdim=True)
        out, _ = self.attn(q, kv, kv, key_padding_mask=kv_pad & ~all_pad, need_weights=False)
        x = self.norm1(q + out)
        return self.norm2(x + self.ffn(x))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class MSN(nn.Module):
    def __init__(self, cfg: MSNConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=PAD)
        self.project = nn.Linear(cfg.embedding_dim, d)
        self.self_attn = nn.ModuleList(AttentiveModule(d, cfg.heads, cfg.dropout) for _ in range(cfg.hops))
        self.cross_attn = AttentiveModule(d, cfg.heads, cfg.dropout)
        self.fuse = nn.Parameter(torch.tensor([0.5, 0.5]))          # word- vs utterance-level relevance
        self.hop_weights = nn.Parameter(torch.zeros(cfg.hops))       # softmax over hops
        self.bilinear = nn.ParameterList(nn.Parameter(torch.eye(d) + 0.01 * torch.randn(d, d)) for _ in range(3))
        c = cfg.cnn_channels
        self.convs = nn.ModuleList([nn.Conv2d(6, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1),
                                    nn.Conv2d(c, c, 3, padding=1)])
        self.utt_proj = nn.Linear(2 * c, cfg.gru_hidden)
        self.gru = nn.GRU(cfg.gru_hidden, cfg.gru_hidden, batch_first=True)
        self.out = nn.Linear(cfg.gru_hidden, 1)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, turns: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """turns [B, U, Lu] (turn slots left-padded: the last turn at U-1), response [B, Lr] -> logits [B]."""
        B, U, Lu = turns.shape
        d = self.cfg.hidden
        t_pad = turns.eq(PAD)                                   # [B, U, Lu]
        r_pad = response.eq(PAD)                                # [B, Lr]
        turn_real = ~t_pad.all(-1)                              # [B, U]
        u0 = self.dropout(self.project(self.embedding(turns.view(B * U, Lu))))   # [BU, Lu, d]
        r0 = self.dropout(self.project(self.embedding(response)))                # [B, Lr, d]
        u_layers, r_layers = [u0], [r0]
        for am in self.self_attn:
            u_layers.append(am(u_layers[-1], u_layers[-1], t_pad.view(B * U, Lu)))
            r_layers.append(am(r_layers[-1], r_layers[-1], r_pad))

        # multi-hop selector
        n_real = turn_real.sum(1)                               # [B]
        slot = torch.arange(U, device=turns.device)
        hop_scores = []
        for hop in range(1, self.cfg.hops + 1):
            layer = u_layers[hop].view(B, U, Lu, d)
            in_key = (slot.unsqueeze(0) >= (U - hop)) & turn_real          # the last `hop` real turns
            key = layer.reshape(B, U * Lu, d)
            key_mask = (in_key.unsqueeze(-1) & ~t_pad).view(B, U * Lu)
            sim = torch.einsum("buld,bkd->bulk", layer, key) / math.sqrt(d)
            sim = sim.masked_fill(~key_mask.view(B, 1, 1, U * Lu), float("-inf")).amax(-1)
            sim = sim.masked_fill(t_pad, 0.0).clamp_min(-1e4)
            word_rel = torch.sigmoid((sim * (~t_pad)).sum(-1) / (~t_pad).sum(-1).clamp_min(1))      # [B, U]
            utt_vec = _masked_mean(layer, ~t_pad)                                                   # [B, U, d]
            key_vec = (key * key_mask.unsqueeze(-1)).sum(1) / key_mask.sum(1, keepdim=True).clamp_min(1)
            utt_rel = F.cosine_similarity(utt_vec, key_vec.unsqueeze(1), dim=-1).clamp_min(0)
            fuse = torch.softmax(self.fuse, 0)
            hop_scores.append(fuse[0] * word_rel + fuse[1] * utt_rel)
        rel = (torch.softmax(self.hop_weights, 0).view(-1, 1, 1) * torch.stack(hop_scores)).sum(0)  # [B, U]
        keep = (rel >= self.cfg.gamma) & turn_real
        weight = (rel * keep).view(B * U, 1, 1)

        # six matching channels per (utterance, response)
        r_rep = lambda x: x.repeat_interleave(U, 0)  # noqa: E731  [B, ...] -> [B*U, ...]
        rp = r_rep(r_pad)
        u_emb, r_emb = u0 * weight, r_rep(r0)
        u_self, r_self = u_layers[-1] * weight, r_rep(r_layers[-1])
        u_cross = self.cross_attn(u_layers[-1], r_rep(r_layers[-1]), rp) * weight
        r_cross = self.cross_attn(r_rep(r_layers[-1]), u_layers[-1], t_pad.view(B * U, Lu))
        channels = []
        for W, (x, y) in zip(self.bilinear, ((u_emb, r_emb), (u_self, r_self), (u_cross, r_cross))):
            channels.append(torch.einsum("bid,de,bje->bij", x, W, y) / math.sqrt(d))
            channels.append(torch.einsum("bid,bjd->bij", F.normalize(x, dim=-1), F.normalize(y, dim=-1)))
        image = torch.stack(channels, 1)                                    # [BU, 6, Lu, Lr]
        cell_mask = (~t_pad.view(B * U, Lu, 1) & ~rp.unsqueeze(1)).unsqueeze(1).to(image.dtype)
        x = image * cell_mask
        for conv in self.convs:
            x = F.relu(conv(x)) * cell_mask
            x = F.max_pool2d(x, 2, ceil_mode=True)
            cell_mask = F.max_pool2d(cell_mask, 2, ceil_mode=True)
        flat_mask = cell_mask.flatten(2)
        feats = torch.cat([(x.flatten(2)).amax(-1), (x.flatten(2) * flat_mask).sum(-1) / flat_mask.sum(-1).clamp_min(1)], -1)
        v = torch.relu(self.utt_proj(feats)).view(B, U, -1)                # [B, U, g]

        # GRU over the real turns, oldest first (slots are left-padded: shift real turns to the front)
        n = n_real.clamp_min(1)
        shift = (slot.unsqueeze(0) + (U - n).unsqueeze(1)) % U
        v = v.gather(1, shift.unsqueeze(-1).expand(-1, -1, v.size(-1)))
        _, h = self.gru(pack_padded_sequence(v, n.cpu(), batch_first=True, enforce_sorted=False))
        return self.out(self.dropout(h[-1])).squeeze(-1)


@dataclass
class MatchBatch:
    turns: torch.Tensor
    response: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "MatchBatch":
        return MatchBatch(self.turns.to(device), self.response.to(device), self.labels.to(device))


class MatchEncoder:
    """Token ids for MSN: the last `max_turns` turns and the response, truncated, trimmed batches."""

    def __init__(self, tokenizer, cfg: MSNConfig):
        self.tok, self.cfg = tokenizer, cfg

    def context_ids(self, turns: Sequence[str]) -> list[list[int]]:
        turns = list(turns)[-self.cfg.max_turns:]
        return [ids[: self.cfg.max_turn_len] for ids in self.tok.encode_batch(turns)] if turns else [[]]

    def response_ids(self, text: str) -> list[int]:
        return self.tok.encode(text)[: self.cfg.max_response_len]

    @staticmethod
    def batch(ctx: list[list[list[int]]], resp: list[list[int]], labels: Sequence[float] | None = None) -> MatchBatch:
        U = max(len(c) for c in ctx)
        L = max([len(t) for c in ctx for t in c] + [1])
        R = max([len(r) for r in resp] + [1])
        turns = torch.full((len(ctx), U, L), PAD, dtype=torch.long)
        response = torch.full((len(ctx), R), PAD, dtype=torch.long)
        for b, (c, r) in enumerate(zip(ctx, resp)):
            for u, t in enumerate(c):
                if t:
                    turns[b, U - len(c) + u, :len(t)] = torch.tensor(t)
            if r:
                response[b, :len(r)] = torch.tensor(r)
        lab = torch.tensor(labels if labels is not None else [0.0] * len(ctx), dtype=torch.float32)
        return MatchBatch(turns, response, lab)


class MSNMatcher:
    """cldg.matching.base.Matcher over a trained MSN: batched by length, inference mode, trimmed padding."""

    name = "msn"

    def __init__(self, model: MSN, tokenizer, device, batch_size: int = 512):
        self.model = model.to(device).eval()
        self.encoder = MatchEncoder(tokenizer, model.cfg)
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        ctx = [self.encoder.context_ids(c) for c in contexts]
        resp = [self.encoder.response_ids(r) for r in responses]
        order = sorted(range(len(ctx)), key=lambda i: (len(ctx[i]), max((len(t) for t in ctx[i]), default=0), len(resp[i])))
        out = np.zeros(len(ctx), np.float32)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            b = MatchEncoder.batch([ctx[i] for i in idx], [resp[i] for i in idx]).to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self.model(b.turns, b.response)
            out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
        return out


def save_msn(directory: Path, model: MSN) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "model.json").write_text(json.dumps({"name": "msn", "config": asdict(model.cfg)}, indent=2))


def load_msn(directory: Path, device="cpu") -> MSN:
    from safetensors.torch import load_file

    meta = json.loads((Path(directory) / "model.json").read_text())
    model = MSN(MSNConfig(**meta["config"]))
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device="cpu"))
    return model.to(device).eval()


def load_msn_matcher(artifact_dir: Path, device, batch_size: int = 512) -> MSNMatcher:
    """The matcher of a `cldg train-matcher` artifact, with the tokenizer of its prepare input."""
    from cldg.artifacts import Artifact
    from cldg.text.tokenizer import DialogueTokenizer

    art = Artifact.load(Path(artifact_dir))
    prepared = Artifact.load(Path(art.manifest["inputs"]["prepare"]["path"]))
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    return MSNMatcher(load_msn(art.path, device), tok, device, batch_size)
