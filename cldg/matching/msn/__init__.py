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

The package, by concern: `layers` (building blocks), `model` (`MSNConfig`, `MSN`), `batching` (ids ->
tensors), `scoring` (inference, `MSNMatcher`), `io` (save / load). Everything is re-exported here.
"""

from cldg.matching.msn.batching import pad_batch, pad_grouped, truncate_pair
from cldg.matching.msn.io import find_tokenizer, load_msn, load_msn_matcher, save_msn
from cldg.matching.msn.layers import NEG, AttentiveBlock, Bilinear, MaskedCNN, masked_mean, pairwise_cosine
from cldg.matching.msn.model import MSN, MSNConfig
from cldg.matching.msn.scoring import MSNMatcher, score_pairs, score_pairs_reference

__all__ = ["NEG", "AttentiveBlock", "Bilinear", "MSN", "MSNConfig", "MSNMatcher", "MaskedCNN", "find_tokenizer",
           "load_msn", "load_msn_matcher", "masked_mean", "pad_batch", "pad_grouped", "pairwise_cosine", "save_msn",
           "score_pairs", "score_pairs_reference", "truncate_pair"]
