"""Make a tiny, randomly initialised transformers model for `--model hf:PATH`, offline, in a few seconds.

    python examples/make_tiny_hf_model.py --prepare-dir cldg-work/prepare/latest --out models/tiny-gpt2
    python examples/make_tiny_hf_model.py --prepare-dir cldg-work/prepare/latest --out models/tiny-bart --arch bart

A byte-level BPE tokenizer (`tokenizers`) is trained on the prepared training pairs (contexts and responses), and a
GPT-2 (causal LM) or BART (encoder-decoder) of the given size is built with random weights; both are written with
`save_pretrained`. Nothing is downloaded. The model knows nothing until `cldg pretrain --model hf:OUT` trains it:
it stands in for a real model directory (DialoGPT, Qwen, BART, T5, ...) so that the pipeline runs on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2


def prepared_texts(prepare_dir: Path) -> list[str]:
    """Every context turn and response of the prepare artifact's training pairs."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(prepare_dir) / "pairs-train.parquet", columns=["context", "response"]).to_pydict()
    return [turn for turns in table["context"] for turn in turns] + list(table["response"])


def train_tokenizer(texts: list[str], vocab_size: int, encoder_decoder: bool):
    """A byte-level BPE tokenizer trained on `texts`; BART's adds <s> ... </s> around each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if encoder_decoder:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", BOS), ("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build(texts: list[str], out: Path, arch: str = "gpt2", vocab_size: int = 2000, dim: int = 64, layers: int = 2,
          heads: int = 2, positions: int = 320, seed: int = 0) -> Path:
    """Write a random `arch` model (gpt2 | bart) and its tokenizer into `out`; returns `out`."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, vocab_size, encoder_decoder=arch == "bart")
    ids = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=dim,
                                           n_layer=layers, n_head=heads, **ids))
    elif arch == "bart":
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=len(tokenizer), d_model=dim, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * dim,
            decoder_ffn_dim=4 * dim, max_position_embeddings=positions, decoder_start_token_id=EOS,
            forced_bos_token_id=None, forced_eos_token_id=None, **ids))
    else:
        raise ValueError(f"--arch {arch!r}: gpt2 or bart")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare-dir", type=Path, required=True, help="A prepare artifact (its training pairs).")
    parser.add_argument("--out", type=Path, required=True, help="Directory to write the model into.")
    parser.add_argument("--arch", choices=("gpt2", "bart"), default="gpt2")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = args.prepare_dir / "pairs-train.parquet"
    if not source.is_file():
        print(f"error: --prepare-dir {args.prepare_dir}: no pairs-train.parquet (run `cldg prepare` first)",
              file=sys.stderr)
        return 2
    if args.dim % args.heads or min(args.vocab_size, args.dim, args.layers, args.heads) < 1:
        print("error: --dim must be a multiple of --heads, and every size at least 1", file=sys.stderr)
        return 2
    out = build(prepared_texts(args.prepare_dir), args.out, args.arch, args.vocab_size, args.dim, args.layers,
                args.heads, seed=args.seed)
    print(f"wrote a random {args.arch} ({args.dim}-d, {args.layers} layers) and its tokenizer to {out}; "
          f"train it with: cldg pretrain --model hf:{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
