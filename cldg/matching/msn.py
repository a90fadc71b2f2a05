"""Multi-hop Selector Network (MSN; Yuan et al., 2019) for multi-turn response selection.

    context turns u_1..u_n, response r
      -> word embeddings (initialised from the prepare stage's word vectors), optional projection
      -> multi-hop selector: for hop h = 1..H the key is the mean of the last h turns; each turn gets a
         word-level relevance (bilinear word-word similarity, max over key words, mean over turn words)
         and an utterance-level relevance (cosine of mean vectors), fused as a*word + (1-a)*utt; the H
         hop scores are combined by a linear layer + sigmoid, turns scoring below gamma are dropped and
         the others are scaled by their score
      -> six matching maps per (turn, response): {embedding, self-attended, cross-attended} x
         {bilinear, cosine}
      -> 3-layer CNN -> one matching vector per turn -> GRU over turns -> linear -> sigmoid

Choices that differ from the released code (github.com/chunhuiyuan/MSN):
- Bilinear forms are FULL d x d matrices (x^T A y). The public code wrote them as
  `einsum("...d,dd,...d")`, which only uses the diagonal of A; we use the whole matrix (initialised to
  the identity, so training starts from a scaled dot product).
- Padding is masked everywhere (attention keys, means, maxima, CNN feature maps, the GRU skips empty
  turn slots), and the CNN ends in a masked global max + mean pool instead of flattening a fixed
  50 x 50 map. So a score does not depend on how much padding its batch carries, and batches can be
  trimmed to their longest row (fast inference).
- Word-level selector relevance is the masked mean over the turn's words (the public code used a
  linear layer over word positions, which ties the model to one padded length).
- Attentive blocks may split the width into `heads` slices (multi-head attention without q/k/v
  projections, as DAM's blocks have none); heads=1 is the paper's block.
- `forward` can take each distinct context once with an index per response: the selector and turn
  self-attention then run once per context, not once per candidate (mining, R10, negatives).

Tensors: context ids [B, U, L] (turn slots left-padded: the last turn is at U-1; each turn's words
left-aligned, PAD=0 after them), response ids [B, Lr]. `MSN.forward` returns logits [B].
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cldg.errors import CldgError
from cldg.text.tokenizer import PAD, UNK

NEG = -1e9  # masked attention logit (finite: a row with no valid key must not turn into NaN)


@dataclass
class MSNConfig:
    vocab_size: int
    embed_dim: int = 100          # size of the word vectors
    hidden: int = 0               # model width (0: embed_dim, no projection)
    ffn_dim: int = 0              # attention block feed-forward size (0: hidden)
    max_turns: int = 5            # context turns seen (the last ones)
    max_turn_len: int = 30        # tokens per context turn
    max_response_len: int = 0     # tokens of the response (0: max_turn_len)
    heads: int = 1                # attention heads (slices of the width, no projections)
    hops: int = 3                 # selector hops (keys = mean of the last 1..hops turns)
    gamma: float = 0.3            # selector threshold
    alpha: float = 0.5            # weight of word-level vs utterance-level relevance
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    match_dim: int = 128          # matching vector per turn
    gru_hidden: int = 128
    dropout: float = 0.1

    @property
    def width(self) -> int:
        return self.hidden or self.embed_dim

    @property
    def response_len(self) -> int:
        return self.max_response_len or self.max_turn_len


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x over `dim` counting only positions where mask is true (0 where none are)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[N, La, d] x [N, Lb, d] -> [N, La, Lb] cosine similarities (0 for zero vectors)."""
    a = a / a.norm(dim=-1, keepdim=True).clamp(min=eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp(min=eps)
    return a @ b.transpose(1, 2)


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


class MSN(nn.Module):
    name = "msn"

    def __init__(self, config: MSNConfig, word_vectors: np.ndarray | None = None,
                 has_vector: np.ndarray | None = None):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        if word_vectors is not None:
            self.init_embeddings(word_vectors, has_vector)
        self.proj = nn.Linear(cfg.embed_dim, d, bias=False) if cfg.hidden and cfg.hidden != cfg.embed_dim else None
        ffn = cfg.ffn_dim or d
        self.selector_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.selector_word = Bilinear(d)
        self.hop_fuse = nn.Linear(cfg.hops, 1)
        nn.init.constant_(self.hop_fuse.weight, 1.0)  # start: every hop counts, scores well above gamma
        nn.init.zeros_(self.hop_fuse.bias)
        self.utt_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.resp_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.utt_resp_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.resp_utt_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.bilinear = nn.ModuleList([Bilinear(d) for _ in range(3)])
        self.cnn = MaskedCNN(6, cfg.cnn_channels, cfg.match_dim)
        self.gru = nn.GRUCell(cfg.match_dim, cfg.gru_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.gru_hidden, 1)

    def init_embeddings(self, vectors: np.ndarray, has_vector: np.ndarray | None) -> None:
        if vectors.shape != (self.config.vocab_size, self.config.embed_dim):
            raise CldgError(f"word vectors have shape {vectors.shape}, the model needs "
                            f"({self.config.vocab_size}, {self.config.embed_dim})")
        with torch.no_grad():
            w = self.embed.weight
            std = float(np.std(vectors[has_vector])) if has_vector is not None and has_vector.any() else 0.1
            w.normal_(0.0, std or 0.1)  # words without a vector: random, same scale
            known = torch.as_tensor(has_vector if has_vector is not None else np.ones(len(vectors), bool))
            w[known] = torch.as_tensor(vectors, dtype=w.dtype)[known]
            w[PAD].zero_()

    # --- pieces -------------------------------------------------------------------------------

    def embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.proj(x) if self.proj is not None else x

    def select(self, ctx: torch.Tensor, word_mask: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
        """Selector scores [B, U] in [0, 1]; turns below gamma (and empty slots) get 0."""
        B, U, L, d = ctx.shape
        flat_mask = word_mask.view(B * U, L)
        attended = self.selector_attn(ctx.view(B * U, L, d), ctx.view(B * U, L, d), flat_mask, flat_mask)
        utt_vec = masked_mean(attended.view(B, U, L, d), word_mask, dim=2)          # [B, U, d]
        hop_scores = []
        for h in range(1, self.config.hops + 1):
            last = torch.zeros(U, dtype=torch.bool, device=ctx.device)
            last[max(U - h, 0):] = True
            in_key = turn_mask & last                                               # [B, U]
            n_key = in_key.sum(1).clamp(min=1).to(ctx.dtype).view(B, 1, 1)
            key = (ctx * in_key.view(B, U, 1, 1).to(ctx.dtype)).sum(1) / n_key      # [B, L, d], word-wise mean
            key_mask = (word_mask & in_key.unsqueeze(-1)).any(1)                    # [B, L]
            key = self.selector_attn(key, key, key_mask, key_mask)
            # word level: each turn word's best match among the key words, averaged over the turn
            sim = self.selector_word(attended.view(B, U * L, d), key).view(B, U, L, L)
            sim = sim.masked_fill(~key_mask.view(B, 1, 1, L), NEG).max(-1).values
            word_rel = masked_mean(sim.unsqueeze(-1), word_mask, dim=2).squeeze(-1)  # [B, U]
            utt_rel = F.cosine_similarity(utt_vec, masked_mean(key, key_mask, 1).unsqueeze(1), dim=-1, eps=1e-6)
            hop_scores.append(self.config.alpha * word_rel + (1 - self.config.alpha) * utt_rel)
        score = torch.sigmoid(self.hop_fuse(torch.stack(hop_scores, -1)).squeeze(-1))  # [B, U]
        keep = turn_mask & (score >= self.config.gamma)
        return score * keep.to(score.dtype)

    def match(self, utt, h_utt, utt_mask, resp, h_resp, resp_mask) -> torch.Tensor:
        """Matching vectors [N, match_dim] for N (turn, response) pairs: embeddings (utt, resp) and
        self-attended representations (h_utt, h_resp) of both sides, with their word masks."""
        x_utt = self.utt_resp_attn(h_utt, h_resp, utt_mask, resp_mask)   # turn words attend to the response
        x_resp = self.resp_utt_attn(h_resp, h_utt, resp_mask, utt_mask)  # and the other way round
        maps = []
        for bil, (a, b) in zip(self.bilinear, ((utt, resp), (h_utt, h_resp), (x_utt, x_resp))):
            maps += [bil(a, b), pairwise_cosine(a, b)]
        maps = torch.stack(maps, dim=1)                                 # [N, 6, L, Lr]
        valid = (utt_mask.unsqueeze(2) & resp_mask.unsqueeze(1)).unsqueeze(1)
        maps = maps * valid.to(maps.dtype)
        return self.cnn(maps, utt_mask.sum(1), resp_mask.sum(1))

    def forward(self, context: torch.Tensor, response: torch.Tensor,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """context [C, U, L], response [B, Lr] token ids -> matching logits [B].

        context_index [B] (optional) says which of the C contexts each response goes with; left out,
        C = B and row i goes with row i. When many candidates share a context (mining, R10
        validation, a context with its negatives in training), the context-only work (selector,
        turn self-attention) is done once per context instead of once per pair.
        """
        C, U, L = context.shape
        B = response.shape[0]
        if context_index is None:
            context_index = torch.arange(B, device=context.device)
        word_mask = context != PAD
        turn_mask = word_mask.any(-1)                                   # [C, U]
        resp_mask = response != PAD
        ctx = self.drop(self.embed_words(context))
        resp = self.drop(self.embed_words(response))
        ctx = ctx * self.select(ctx, word_mask, turn_mask).view(C, U, 1, 1)
        # every real turn of every context, self-attended once (empty turn slots are never matched)
        c_idx, u_idx = turn_mask.nonzero(as_tuple=True)
        turn_id = torch.full((C, U), -1, dtype=torch.long, device=context.device)
        turn_id[c_idx, u_idx] = torch.arange(len(c_idx), device=context.device)
        turns, turns_mask = ctx[c_idx, u_idx], word_mask[c_idx, u_idx]
        h_turns = self.utt_attn(turns, turns, turns_mask, turns_mask)
        h_resp = self.resp_attn(resp, resp, resp_mask, resp_mask)
        # (response, turn) pairs: response b with each real turn of its context
        pair_turns = turn_mask[context_index]                           # [B, U]
        b_idx, pu_idx = pair_turns.nonzero(as_tuple=True)
        t = turn_id[context_index[b_idx], pu_idx]
        vectors = self.match(turns[t], h_turns[t], turns_mask[t], resp[b_idx], h_resp[b_idx], resp_mask[b_idx])
        per_turn = vectors.new_zeros(B, U, vectors.shape[-1])
        per_turn[b_idx, pu_idx] = vectors
        h = vectors.new_zeros(B, self.config.gru_hidden)
        for u in range(U):  # empty slots leave the state unchanged
            step = pair_turns[:, u].unsqueeze(-1).to(h.dtype)
            h = step * self.gru(per_turn[:, u], h) + (1 - step) * h
        return self.out(self.drop(h)).squeeze(-1)


# --- tensors from token ids ---------------------------------------------------------------------

def truncate_pair(context_ids: Sequence[Sequence[int]], response_ids: Sequence[int], max_turns: int,
                  max_turn_len: int, max_response_len: int = 0) -> tuple[list[list[int]], list[int]]:
    """The last `max_turns` turns, each turn's first `max_turn_len` tokens and the response's first
    `max_response_len` (0: max_turn_len); an utterance that encodes to nothing becomes [UNK] so that it
    still counts as a turn."""
    turns = [list(t[:max_turn_len]) or [UNK] for t in context_ids[-max_turns:]] if max_turns > 0 else []
    return turns, list(response_ids[:max_response_len or max_turn_len]) or [UNK]


def pad_batch(contexts: Sequence[Sequence[Sequence[int]]], responses: Sequence[Sequence[int]],
              device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Already-truncated ids -> (context [C, U, L], response [B, Lr]), trimmed to the longest row.

    Turn slots are left-padded (the last turn at U-1); words are left-aligned in each slot.
    """
    U = max(1, max((len(c) for c in contexts), default=1))
    L = max(1, max((len(t) for c in contexts for t in c), default=1))
    Lr = max(1, max((len(r) for r in responses), default=1))
    ctx = np.zeros((len(contexts), U, L), dtype=np.int64)
    resp = np.zeros((len(responses), Lr), dtype=np.int64)
    for i, c in enumerate(contexts):
        offset = U - len(c)
        for j, t in enumerate(c):
            ctx[i, offset + j, :len(t)] = t
    for i, r in enumerate(responses):
        resp[i, :len(r)] = r
    return torch.from_numpy(ctx).to(device), torch.from_numpy(resp).to(device)


# --- the Matcher --------------------------------------------------------------------------------

class MSNMatcher:
    """`cldg.matching.base.Matcher` backed by an MSN: probabilities sigmoid(logit) in [0, 1].

    Fast inference: utterances are encoded once per call (contexts repeat across candidates), pairs
    are sorted by length so each batch carries little padding, batches are trimmed to their longest
    row, and scoring runs under `torch.inference_mode` (bf16 autocast on CUDA).
    """

    name = "msn"

    def __init__(self, model: MSN, tokenizer, device: Any = "cpu", batch_size: int = 256):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    def encode(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]):
        unique = list(dict.fromkeys([u for c in contexts for u in c] + list(responses)))
        ids = dict(zip(unique, self.tokenizer.encode_batch(unique))) if unique else {}
        cfg = self.model.config
        return [truncate_pair([ids[u] for u in c], ids[r], cfg.max_turns, cfg.max_turn_len, cfg.response_len)
                for c, r in zip(contexts, responses)]

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        return self.score_ids(self.encode(contexts, responses))

    def score_ids(self, pairs: Sequence[tuple[list[list[int]], list[int]]]) -> np.ndarray:
        """Probabilities for already-truncated (context turn ids, response ids) pairs."""
        return score_pairs(self.model, pairs, self.batch_size, self.device)


def pad_grouped(contexts: Sequence[Sequence[Sequence[int]]], responses: Sequence[Sequence[int]],
                device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like `pad_batch`, but each distinct context is padded once: (context [C, U, L], response [B, Lr],
    context_index [B]) for `MSN.forward(context, response, context_index)`."""
    slot: dict[tuple, int] = {}
    unique: list = []
    index = []
    for c in contexts:
        key = tuple(map(tuple, c))
        if key not in slot:
            slot[key] = len(unique)
            unique.append(c)
        index.append(slot[key])
    ctx, resp = pad_batch(unique, responses, device)
    return ctx, resp, torch.tensor(index, dtype=torch.long, device=device)


def score_pairs(model: MSN, pairs: Sequence[tuple[list[list[int]], list[int]]], batch_size: int,
                device: Any) -> np.ndarray:
    """Batched MSN scoring of (context ids, response ids) pairs -> probabilities [N].

    Pairs that share a context are put side by side (the context is encoded once per batch), and
    contexts of similar shape share a batch, so batches carry little padding.
    """
    device = torch.device(device)
    out = np.zeros(len(pairs), dtype=np.float32)
    groups: dict[tuple, list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault(tuple(map(tuple, c)), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), max((len(t) for t in kv[0]), default=0)))
    order = [i for _, members in ordered for i in sorted(members, key=lambda i: len(pairs[i][1]))]
    was_training = model.training
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    with torch.inference_mode(), autocast:
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            ctx, resp, cidx = pad_grouped([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], device)
            out[idx] = torch.sigmoid(model(ctx, resp, cidx).float()).cpu().numpy()
    model.train(was_training)
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- save / load ------------------------------------------------------------------------------

def save_msn(directory: Path, model: MSN) -> None:
    """model.safetensors + model.json ({"name": "msn", "config", "vocab_size"})."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    meta = {"name": "msn", "config": asdict(model.config), "vocab_size": model.config.vocab_size}
    (directory / "model.json").write_text(json.dumps(meta, indent=2))


def load_msn(directory: Path, device: Any = "cpu") -> MSN:
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.is_file() or not (directory / "model.safetensors").is_file():
        raise CldgError(f"{directory}: no model.json / model.safetensors (not an MSN matcher artifact; "
                        f"run `cldg train-matcher`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("name") != "msn":
        raise CldgError(f"{meta_path}: model is {meta.get('name')!r}, expected 'msn'")
    model = MSN(MSNConfig(**meta["config"]))
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device="cpu"))
    return model.to(device).eval()


def find_tokenizer(artifact_dir: Path) -> Path:
    """The matcher's own copy of tokenizer.json, else the prepare artifact named in its manifest."""
    artifact_dir = Path(artifact_dir)
    own = artifact_dir / "tokenizer.json"
    if own.is_file():
        return own
    manifest = artifact_dir / "manifest.json"
    if manifest.is_file():
        prep = json.loads(manifest.read_text()).get("inputs", {}).get("prepare", {}).get("path")
        if prep and (Path(prep) / "tokenizer.json").is_file():
            return Path(prep) / "tokenizer.json"
    raise CldgError(f"{artifact_dir}: no tokenizer.json here nor in its prepare input")


def load_msn_matcher(artifact_dir: Path, device: Any = "cpu", batch_size: int = 256) -> MSNMatcher:
    """The MSN matcher of a `cldg train-matcher` artifact, ready to score."""
    from cldg.text.tokenizer import DialogueTokenizer

    model = load_msn(artifact_dir, device)
    return MSNMatcher(model, DialogueTokenizer.load(find_tokenizer(artifact_dir)), device, batch_size)
