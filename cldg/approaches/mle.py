"""mle: maximum likelihood, the reference model that every other approach starts from (`cldg pretrain`)."""
from __future__ import annotations

from dataclasses import dataclass

from cldg.approaches import register_approach
from cldg.choices import MODELS, TRANSFORMER_POSITIONS
from cldg.config import option, options_like
from cldg.training.options import TrainOptions


@dataclass
class MLEOptions(options_like(TrainOptions, omit=("eval_every",), batch_size=(128, "Pairs per batch."))):
    model: str = option("seq2seq", "Dialogue model.", choices=MODELS)
    embedding_dim: int = option(0, "Embedding size (0: the model's paper default, 256 or 512).")
    hidden_size: int = option(0, "RNN hidden size (0: 256).")
    num_layers: int = option(0, "Layers (0: 2 for RNNs, 6 for the transformer).")
    num_heads: int = option(8, "Transformer attention heads.")
    ffn_dim: int = option(0, "Transformer feed-forward size (0: 4 x embedding).")
    positions: str = option("sinusoidal", "Transformer positions.", choices=TRANSFORMER_POSITIONS)
    dropout: float = option(0.1, "Dropout.")
    max_context_turns: int = option(3, "Context turns the model sees.")
    max_turn_len: int = option(40, "Tokens per context turn.")
    max_context_len: int = option(120, "Tokens of the flat context.")
    max_response_len: int = option(40, "Tokens of the response (EOS included).")
    max_train_pairs: int = option(0, "Use only this many training pairs (seeded; 0 = all).")
    max_valid_pairs: int = option(2000, "Validate on at most this many pairs (0 = all).")


@register_approach("mle")
class MLE:
    """Maximum likelihood: the token NLL of each response given its context (seq2seq, HRED, HRAN, transformer, or
    a pretrained hf:PATH model fine-tuned)."""

    options = MLEOptions
    recipe = "cldg.training.recipes.mle:MLERecipe"
    command = "pretrain"
    makes = "reference"
    needs = ("prepare",)
