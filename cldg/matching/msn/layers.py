"""MSN building blocks: masked helpers, the full bilinear form, the DAM attentive block, the masked CNN.

See `cldg.matching.msn` for the model they make up.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cldg.errors import CldgError

NEG = -1e9  # masked attention logit (finite: a row with no valid key must not turn into NaN)

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x over `dim` counting only positions where mask is true (0 where none are)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[N, La, d] x [N, Lb, d] -> [N, La, Lb] cosine similarities (0 for zero vectors)."""
    return unit(a, eps) @ unit(b, eps).transpose(1, 2)


def unit(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x scaled to unit length along the last dim (a zero vector stays 0)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


class Bilinear(nn.Module):
    """x^T A y / sqrt(d) with a full d x d matrix A (identity at start)."""

    def __init__(self, dim: int):
        super().__init__()
        self.A = nn.Parameter(torch.eye(dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[N, Lx, d] x [N, Ly, d] -> [N, Lx, Ly]."""
        return (x @ self.A) @ y.transpose(1, 2) * self.scale


class AttentiveBlock(nn.Module):
    """The DAM / MSN attentive module: LN(q + Attn(q, k, v)), then LN(x + FFN(x)). Padded queries -> 0.

    As in DAM there are no q/k/v projections; with `heads` > 1 the width is split into that many
    slices, each attending on its own (multi-head attention without projections).
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise CldgError(f"--heads {heads}: the model width {dim} is not divisible by it")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim // heads)

    def forward(self, q, kv, q_mask, kv_mask):
        N, Lq, d = q.shape
        h = self.heads
        qh = q.view(N, Lq, h, d // h).transpose(1, 2)                   # [N, h, Lq, d/h]
        kh = kv.view(N, kv.shape[1], h, d // h).transpose(1, 2)          # [N, h, Lk, d/h]
        logits = (qh @ kh.transpose(2, 3)) * self.scale
        logits = logits.masked_fill(~kv_mask.view(N, 1, 1, -1), NEG)
        att = (torch.softmax(logits, dim=-1) @ kh).transpose(1, 2).reshape(N, Lq, d)
        x = self.norm1(q + self.drop(att))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return x * q_mask.unsqueeze(-1).to(x.dtype)


class MaskedCNN(nn.Module):
    """3 x (3x3 conv, ReLU, 2x2 max-pool) over the matching maps, then masked global max + mean pool.

    Outside the valid (turn words x response words) rectangle every feature is forced to 0 after each
    layer, so zero-padded 'same' convolutions and ceil-mode pooling see exactly what a trimmed map sees.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], out_dim: int):
        super().__init__()
        convs, c = [], in_channels
        for ch in channels:
            convs.append(nn.Conv2d(c, ch, kernel_size=3, padding=1))
            c = ch
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(2 * c, out_dim)

    def forward(self, maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """maps [N, C, H, W]; rows/cols [N] valid sizes -> [N, out_dim]."""
        x = maps
        for conv in self.convs:
            x = F.relu(conv(x)) * _rect_mask(rows, cols, x.shape[2], x.shape[3], x.dtype)
            x = F.max_pool2d(x, 2, ceil_mode=True)  # values are >= 0, so padded zeros never win
            rows, cols = (rows + 1) // 2, (cols + 1) // 2
        mask = _rect_mask(rows, cols, x.shape[2], x.shape[3], x.dtype)
        x = x * mask
        pooled_max = x.flatten(2).max(dim=2).values
        pooled_mean = x.flatten(2).sum(2) / mask.flatten(1).sum(1, keepdim=True).clamp(min=1.0)
        return torch.tanh(self.proj(torch.cat([pooled_max, pooled_mean], dim=1)))


def _rect_mask(rows, cols, h, w, dtype):
    r = torch.arange(h, device=rows.device).view(1, h, 1) < rows.view(-1, 1, 1)
    c = torch.arange(w, device=cols.device).view(1, 1, w) < cols.view(-1, 1, 1)
    return (r & c).unsqueeze(1).to(dtype)
