"""The interface every dialogue model implements (see docs/internals.md).

Teacher forcing:  forward(batch) -> logits [B, T, V] for batch.response_in. A model with
                  `group_forward` also takes forward(batch, shared_contexts=(first, of), at=mask): rows
                  that repeat a context (a contrastive group's response-side samples) encode it once,
                  and logits [N, V] come only for the N positions where the [B, T] mask `at` is set.
Decoding:         state = init_decoding(batch); logits, state = decode_step(state, prev_tokens [B]);
                  state = reorder_state(state, index) selects / repeats batch rows (beam search).
                  A model that samples in init_decoding (a latent z) may take `row_generators` (one
                  torch.Generator per row): the decoder passes them when it has row seeds.
Models never compute a loss (that lives in cldg.training.losses).
"""
from __future__ import annotations

import abc
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from cldg.text.tokenizer import PAD


class DialogueModel(nn.Module, metaclass=abc.ABCMeta):
    name: str = ""
    config_class: type = object

    def __init__(self, vocab_size: int, config: Any):
        super().__init__()
        self.vocab_size = vocab_size
        self.config = config

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @abc.abstractmethod
    def forward(self, batch) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def init_decoding(self, batch) -> dict[str, Any]:
        ...

    # forward(batch, shared_contexts=None, at=None) is understood (encode_shared, at_positions)
    group_forward: bool = False

    def encode_shared(self, batch, shared_contexts: tuple[torch.Tensor, torch.Tensor] | None,
                      encode=None) -> dict[str, Any]:
        """init_decoding(batch), with each distinct context encoded once when `shared_contexts` = (first, of) is
        given: first [U], a row of the batch holding each distinct context; of [B], the distinct context of each
        row. In eval mode the same numbers as encoding every row (up to float summation order); in training the
        rows that share a context share its encoder dropout mask too (before, each drew its own: the same
        expectation, a little less noise between a pair and its response-side samples). The encoder's work and
        its backward pass shrink to U rows, about half of a contrastive batch's. `encode` replaces init_decoding
        where teacher forcing needs less than decoding does."""
        encode = encode or self.init_decoding
        if shared_contexts is None:
            return encode(batch)
        first, of = shared_contexts
        return self.reorder_state(encode(batch.select(first)), of)

    @abc.abstractmethod
    def decode_step(self, state: dict[str, Any], prev_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        ...

    def reorder_state(self, state: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        """Select rows of every tensor in the state; RNN hidden states are [layers, B, H] (dim 1)."""
        out = {}
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.index_select(1 if k in self.layer_first_keys else 0, index)
            elif isinstance(v, tuple):
                out[k] = tuple(t.index_select(1 if k in self.layer_first_keys else 0, index) for t in v)
            else:
                out[k] = v
        return out

    layer_first_keys: tuple[str, ...] = ("hidden",)
    # State entries that depend on the context only (the encoded context): the same for every
    # hypothesis of a context, so beam search expands them once and never reorders them.
    beam_static_keys: tuple[str, ...] = ()

    def init_embeddings(self, vectors: np.ndarray, has_vector: np.ndarray, seed: int = 0) -> int:
        """Copy pretrained word vectors into the embedding (a seeded random projection when the
        dimensions differ). Returns how many rows were initialised."""
        emb = self.embedding.weight
        vec = torch.from_numpy(vectors).float()
        if vec.size(1) != emb.size(1):
            g = torch.Generator().manual_seed(seed)
            proj = torch.randn(vec.size(1), emb.size(1), generator=g) / vec.size(1) ** 0.5
            vec = vec @ proj
        rows = torch.from_numpy(np.asarray(has_vector, dtype=bool))
        rows[PAD] = False
        with torch.no_grad():
            scale = emb.std() / vec[rows].std().clamp_min(1e-6) if rows.any() else 1.0
            emb[rows] = (vec[rows] * scale).to(emb.dtype)
        return int(rows.sum())


def row_randn(row_generators: list[torch.Generator], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """[B, *shape] standard normal noise, row b drawn from row_generators[b] (CPU, float32), on like's device and
    dtype: a row's noise depends on its own generator only, not on its batch."""
    noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in row_generators])
    return noise.to(device=like.device, dtype=like.dtype)


def utterance_vectors(tokens: torch.Tensor, embedding: nn.Embedding, gru: nn.GRU,
                      drop: nn.Module | None = None) -> torch.Tensor:
    """[N, L] right-padded token ids -> [N, 2H]: a bidirectional GRU's final states of both directions over each
    row's own tokens (packed), zeros for an empty row (a turn slot without a turn). `drop` applies to the embeddings."""
    lengths = tokens.ne(PAD).sum(1)
    embedded = embedding(tokens)
    if drop is not None:
        embedded = drop(embedded)
    packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.clamp_min(1).cpu(), batch_first=True,
                                               enforce_sorted=False)
    _, h = gru(packed)
    return torch.cat([h[0], h[1]], -1) * lengths.gt(0).unsqueeze(1).to(h.dtype)


def at_positions(x: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, ...] at the positions where `at` [B, T] is set -> [N, ...] (row-major), or all of x for None.
    Before the output layer: a padded batch of responses is mostly padding, whose logits nobody reads."""
    return x if at is None else x[at]


def turn_count(context_turns: torch.Tensor) -> torch.Tensor:
    """[B, U, L] left-padded turn slots -> the turns of each row [B], counted from its first non-empty slot: a
    turn that tokenized to nothing between real ones still counts, so real_turns_first keeps the oldest turn."""
    filled = context_turns.ne(PAD).any(-1)
    U = filled.size(1)
    first = torch.where(filled.any(1), filled.to(torch.uint8).argmax(1), U)  # U: no turn at all
    return U - first


def real_turns_first(turn_vectors: torch.Tensor, n_turns: torch.Tensor) -> torch.Tensor:
    """Turn slots are left-padded (the last turn at U - 1): [B, U, H] with each row's n_turns real turns moved to
    the front (slot i <- slot (i + U - n) mod U), to be packed by n_turns, so padding never changes an encoding."""
    U = turn_vectors.size(1)
    shift = (torch.arange(U, device=turn_vectors.device).unsqueeze(0) + (U - n_turns).unsqueeze(1)) % U
    return turn_vectors.gather(1, shift.unsqueeze(-1).expand(-1, -1, turn_vectors.size(-1)))


def attention_mask_scores(scores: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Mask padded memory positions (True = pad) before a softmax; fully padded rows get uniform 0s."""
    scores = scores.masked_fill(pad_mask, float("-inf"))
    all_pad = pad_mask.all(-1, keepdim=True)
    return scores.masked_fill(all_pad, 0.0)
