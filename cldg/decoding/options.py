"""How to decode: one dataclass of options (with their help) for `evaluate` and `chat` (torch-free).

`evaluate`'s Config inherits it; `chat` takes the same options with its own defaults
(`cldg.config.options_like(DecodingOptions, decoding="beam", no_repeat_ngram=3)`). `decode_config()` gives
the library's `cldg.decoding.search.DecodeConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

from cldg.choices import DECODING_METHODS
from cldg.config import option


@dataclass
class DecodingOptions:
    decoding: str = option("greedy", "Decoding method.", choices=DECODING_METHODS)
    beam_size: int = option(5, "Beam size (beam).")
    length_penalty: float = option(1.0, "Length penalty alpha (beam): GNMT ((5+len)/6)**alpha for cldg models, "
                                        "transformers' length**alpha for hf: models.")
    top_k: int = option(10, "k (topk).")
    top_p: float = option(0.9, "p (nucleus).")
    temperature: float = option(1.0, "Sampling temperature (topk, nucleus).")
    max_len: int = option(30, "Longest response, in tokens.")
    min_len: int = option(1, "Shortest response, in tokens.")
    no_repeat_ngram: int = option(0, "Block repeated n-grams inside the response (0 = off).")
    block_context_ngram: int = option(0, "Block n-grams copied from the context (0 = off).")

    def problems(self) -> list[str]:
        """What is wrong with these values, one line each."""
        checks = [(self.decoding not in DECODING_METHODS,
                   f"--decoding {self.decoding!r}: one of {', '.join(DECODING_METHODS)}"),
                  (self.beam_size < 1, "--beam-size must be at least 1"),
                  (self.top_k < 1, "--top-k must be at least 1"),
                  (not 0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
                  (self.temperature <= 0, "--temperature must be positive"),
                  (self.max_len < 1, "--max-len must be at least 1"),
                  (not 0 <= self.min_len <= self.max_len, "--min-len must be between 0 and --max-len"),
                  (self.no_repeat_ngram < 0 or self.block_context_ngram < 0, "n-gram blocking sizes must be >= 0")]
        return [msg for bad, msg in checks if bad]

    def decode_config(self):
        from cldg.decoding.search import DecodeConfig

        return DecodeConfig(self.decoding, self.beam_size, self.length_penalty, self.top_k, self.top_p,
                            self.temperature, self.max_len, self.min_len, self.no_repeat_ngram,
                            self.block_context_ngram)
