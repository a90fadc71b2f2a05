"""Every list of named choices, in one torch-free module: the CLI builds its options from these (so that
`cldg --help` loads no torch) and the library checks its arguments against the same tuples."""
from __future__ import annotations

# dialogue models (cldg.models.build_model)
MODELS = ("seq2seq", "hred", "hran", "transformer")
# registered models that only an approach builds (not `pretrain --model` choices): the CVAE, MMI-bidi's forward +
# backward pair, MMI-antiLM's forward model + language model, DialogWAE
APPROACH_MODELS = ("cvae", "mmi", "mmi-antilm", "dialogwae")
# models whose computation a fix changed, with their revision: it joins the fingerprint of whatever a stage builds
# with `model = <name>` (cldg.config.fingerprint_config), so a model trained before the fix is retrained, not reused.
# hred 2: an empty turn between real ones no longer drops the oldest turn (base.turn_count)
MODEL_REVISIONS = {"hred": 2}
TRANSFORMER_POSITIONS = ("sinusoidal", "learned")
# the contrastive loss's forms (cldg.training.losses.contrastive_loss; Eq. 4, 3 and 2 of the paper, and the
# released code's soft form)
LOSS_VARIANTS = ("eq4", "eq3", "eq2", "soft")
# decoding methods (cldg.decoding.search)
DECODING_METHODS = ("greedy", "beam", "topk", "nucleus")
# corpus readers (cldg.data.loaders); evaluate --input takes any of them but the built-in chitchat corpus
CORPUS_FORMATS = ("auto", "chitchat", "jsonl", "json", "parquet", "personachat", "dailydialog", "opensubtitles",
                  "douban")
INPUT_FORMATS = tuple(f for f in CORPUS_FORMATS if f != "chitchat")
# what ranks mined candidates (cldg.matching)
MATCHERS = ("msn", "bm25")
# Lucene analysis of the BM25 indexes
INDEX_LANGUAGES = ("auto", "en", "pretokenized")
# how mine-samples searches the BM25 indexes (cldg.retrieval.search: anserini; cldg.retrieval.sparse: numpy)
RETRIEVAL_BACKENDS = ("lucene", "numpy")
EVAL_SPLITS = ("test", "valid")
# a model named hf:PATH is a local transformers directory (cldg.models.hf); told apart here without importing torch
HF_PREFIX = "hf:"


def is_hf_spec(spec) -> bool:
    """True for a model named `hf:PATH`."""
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def hf_path(spec: str):
    """The directory (a Path) of `hf:PATH` (a bare path is taken as it is); an empty one is a CldgError."""
    from pathlib import Path

    from cldg.errors import CldgError

    path = spec[len(HF_PREFIX):] if is_hf_spec(spec) else spec
    if not path.strip():
        raise CldgError(f"{spec!r}: no directory named (hf:PATH, a local transformers model directory)")
    return Path(path).expanduser()
