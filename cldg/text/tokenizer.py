"""Word-level tokenizer (HF `tokenizers`), trained on the training split only.

English: NFKC + lowercase, words and punctuation split apart. `pretokenized=True` (Chinese, e.g.
Douban, already segmented): split on whitespace only. Ids 0-4 are the special tokens below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

PAD, UNK, BOS, EOS, SEP = 0, 1, 2, 3, 4
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>"]


def _build_pipeline(pretokenized: bool, lowercase: bool):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(unk_token="<unk>"))
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit() if pretokenized else pre_tokenizers.Whitespace()
    return tok


class DialogueTokenizer:
    """Thin wrapper around a `tokenizers.Tokenizer` with the ids cldg relies on."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        for i, s in enumerate(SPECIALS):
            assert tokenizer.token_to_id(s) == i, f"special token {s} must have id {i}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_freq: int = 1, pretokenized: bool = False,
              lowercase: bool = True) -> "DialogueTokenizer":
        from tokenizers.trainers import WordLevelTrainer

        tok = _build_pipeline(pretokenized, lowercase)
        trainer = WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_freq, special_tokens=SPECIALS,
                                   show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path | str) -> "DialogueTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path | str) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def words(self, text: str) -> list[str]:
        """The normalised word tokens of `text` (OOV words kept): the unit of every metric."""
        norm = self.tok.normalizer.normalize_str(text)
        return [w for w, _ in self.tok.pre_tokenizer.pre_tokenize_str(norm)]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The tokens of `ids` joined by spaces (special tokens dropped): "i ' m fine ."."""
        return " ".join(self.decode_tokens(ids))

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.tok.id_to_token(int(i)) for i in ids if int(i) >= len(SPECIALS)]

    @property
    def pretokenized(self) -> bool:
        """Whitespace-segmented text (e.g. Chinese): tokens are joined by spaces, never glued."""
        from tokenizers import pre_tokenizers

        return isinstance(self.tok.pre_tokenizer, pre_tokenizers.WhitespaceSplit)

    def detokenize(self, tokens: list[str]) -> str:
        """Readable text from tokens: "i'm fine." (English rules; pretokenized text stays space-joined)."""
        from cldg.text.detok import detokenize

        return " ".join(tokens) if self.pretokenized else detokenize(tokens)

    def token_to_id(self, word: str) -> int:
        i = self.tok.token_to_id(word)
        return UNK if i is None else i

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(int(i))

    def vocab(self) -> list[str]:
        """Tokens ordered by id."""
        return [self.tok.id_to_token(i) for i in range(self.vocab_size)]
