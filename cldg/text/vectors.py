"""Word vectors aligned with the tokenizer: model initialisation and the embedding metrics.

Either a user's fastText `.vec` text file, or fastText vectors trained with gensim on the training
text (subword n-grams give a vector to every vocabulary word). Stored as safetensors:
`vectors` [vocab, dim] float32 (zeros where there is none) and `has_vector` [vocab] uint8.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from cldg.errors import CldgError


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector with hashfxn(word + seed); Python's str hash changes
    from one process to the next, so use a stable one (same seed, one worker: same vectors)."""
    return zlib.crc32(text.encode("utf-8"))


def train_fasttext(sentences: list[list[str]], dim: int, epochs: int, seed: int, workers: int = 2,
                   on_epoch_end=None):
    """Skip-gram fastText (gensim) on tokenized sentences; `on_epoch_end()` is called after each epoch."""
    from gensim.models import FastText
    from gensim.models.callbacks import CallbackAny2Vec

    class _EpochHook(CallbackAny2Vec):
        def on_epoch_end(self, model):
            if on_epoch_end is not None:
                on_epoch_end()

    # fastText's default 2M n-gram buckets cost 2.4 GB at 300-d; a dialogue corpus has far fewer
    # distinct character n-grams, so size the table to the vocabulary (collisions stay rare).
    n_words = len({w for s in sentences for w in s})
    bucket = min(2_000_000, max(100_000, 20 * n_words))
    model = FastText(vector_size=dim, window=5, min_count=1, sg=1, seed=seed, workers=workers,
                     min_n=3, max_n=6, bucket=bucket, hashfxn=_stable_hash)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs, callbacks=[_EpochHook()])
    return model.wv


def vectors_from_fasttext(wv, vocab: list[str], n_special: int) -> tuple[np.ndarray, np.ndarray]:
    mat = np.zeros((len(vocab), wv.vector_size), dtype=np.float32)
    has = np.zeros(len(vocab), dtype=np.uint8)
    for i, w in enumerate(vocab):
        if i < n_special:
            continue
        mat[i] = wv[w]
        has[i] = 1
    return mat, has


def read_vec_file(path: Path, vocab: list[str], n_special: int, lowercase: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A fastText `.vec` file: an optional header 'count dim', then 'word v1 ... vdim' lines.

    Only vocabulary words are parsed (a 2M-word file is mostly other words). With `lowercase`, the
    first (most frequent, in fastText's order) casing of a word gives its vector.
    """
    index = {w: i for i, w in enumerate(vocab) if i >= n_special}
    mat = has = None
    dim = header_dim = None
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n").rstrip(" ")
                if not line:
                    continue
                word, _, rest = line.partition(" ")
                if lineno == 1 and word.isdigit() and rest.isdigit():
                    header_dim = int(rest)  # header 'count dim'
                    continue
                if dim is None:
                    dim = len(rest.split(" ")) if rest else 0
                    if dim < 1:
                        raise CldgError(f"{path}:{lineno}: expected 'word v1 v2 ...'")
                    if header_dim is not None and dim != header_dim:
                        raise CldgError(f"{path}:{lineno}: expected {header_dim} numbers after the word (the header's "
                                        f"dimension), got {dim}")
                    mat = np.zeros((len(vocab), dim), dtype=np.float32)
                    has = np.zeros(len(vocab), dtype=np.uint8)
                i = index.get(word.lower() if lowercase else word)
                if i is None or has[i]:
                    continue
                values = rest.split(" ")
                if len(values) != dim:
                    raise CldgError(f"{path}:{lineno}: expected {dim} numbers after the word, got {len(values)}")
                try:
                    mat[i] = np.asarray(values, dtype=np.float32)
                except ValueError:
                    raise CldgError(f"{path}:{lineno}: not a number in the vector of {word!r}") from None
                has[i] = 1
    except UnicodeDecodeError as exc:
        raise CldgError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except FileNotFoundError:
        raise CldgError(f"--vectors {path}: no such file") from None
    if mat is None:
        raise CldgError(f"{path}: no vectors in the file")
    return mat, has


def save_word_vectors(path: Path, vectors: np.ndarray, has_vector: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({"vectors": vectors.astype(np.float32), "has_vector": has_vector.astype(np.uint8)}, str(path))


def load_word_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    d = load_file(str(path))
    return d["vectors"], d["has_vector"].astype(bool)
