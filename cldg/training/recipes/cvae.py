"""CVAERecipe: Zhao et al.'s (2017) CVAE objective on (context, response) pairs.

Per response: the reconstruction NLL with z drawn from the recognition network (reparameterised), plus the KL
between the recognition and the prior networks weighted by the annealing schedule (Bowman et al., 2016), plus the
bag-of-words loss; each a sum over the response's tokens, averaged over the batch (the released code's ELBO).
Validation: the negative ELBO with the KL at full weight and z at the recognition network's mean (deterministic),
per response; the NLL per token is reported too.
"""
from __future__ import annotations

import torch

from cldg.data.batching import Limits
from cldg.text.tokenizer import PAD
from cldg.training.losses import bag_of_words_loss, gaussian_kl, kl_anneal_weight, sequence_logprob
from cldg.training.recipes.mle import MLERecipe
from cldg.training.recipes.mmi import read_split


class CVAERecipe(MLERecipe):
    progress_keys = ("kl", "bow", "kl_weight")

    def __init__(self, train, valid, batch_size, seed, device, full_kl_step: int, bow_weight: float):
        super().__init__(train, valid, batch_size, seed, device)
        self.full_kl_step, self.bow_weight = full_kl_step, bow_weight

    @classmethod
    def setup(cls, cfg, inputs, seed: int, device):
        from cldg.data.batching import EncodedPairs
        from cldg.models import build_model
        from cldg.text.tokenizer import DialogueTokenizer
        from cldg.text.vectors import load_word_vectors

        tok = DialogueTokenizer.load(inputs.prepare / "tokenizer.json")
        limits = Limits(cfg.max_context_turns, cfg.max_turn_len, cfg.max_context_len, cfg.max_response_len)
        train = EncodedPairs(tok, *read_split(inputs.prepare, "train", cfg.max_train_pairs, seed), limits)
        valid = EncodedPairs(tok, *read_split(inputs.prepare, "valid", cfg.max_valid_pairs, seed), limits)
        model = build_model("cvae", tok.vocab_size, embedding_dim=cfg.embedding_dim, utterance_size=cfg.utterance_size,
                            context_size=cfg.context_size, decoder_size=cfg.decoder_size, latent_size=cfg.latent_size,
                            prior_hidden=max(2 * cfg.latent_size, 100), bow_hidden=cfg.decoder_size,
                            dropout=cfg.dropout)
        vectors, has_vector = load_word_vectors(inputs.prepare / "word-vectors.safetensors")
        model.init_embeddings(vectors, has_vector, seed)
        return model, cls(train, valid, cfg.batch_size, seed, device, cfg.full_kl_step, cfg.bow_weight)

    def describe(self) -> str:
        return (f"CVAE on {len(self.train):,} train / {len(self.valid):,} valid pairs, KL annealed over "
                f"{self.full_kl_step:,} steps, bag-of-words weight {self.bow_weight}")

    def terms(self, model, batch, sample: bool):
        """(reconstruction NLL [B], KL [B], bag-of-words loss [B], real tokens)."""
        c = model.encode_context(batch)
        mu_q, logvar_q = model.recognition(c, model.encode_response(batch))
        mu_p, logvar_p = model.prior(c)
        z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * logvar_q) if sample else mu_q
        nll = -sequence_logprob(model.decode_logits(batch, c, z).float(), batch.response_out, PAD)
        kl = gaussian_kl(mu_q.float(), logvar_q.float(), mu_p.float(), logvar_p.float())
        bow = bag_of_words_loss(model.bow_logits(c, z), batch.response_out, PAD)
        return nll, kl, bow, int(batch.response_out.ne(PAD).sum())

    def loss(self, model, batch, step: int):
        from cldg.training import distributed

        nll, kl, bow, n = self.terms(distributed.unwrap(model), batch, sample=True)
        weight = kl_anneal_weight(step, self.full_kl_step)
        loss = nll.mean() + weight * kl.mean() + self.bow_weight * bow.mean()
        return loss, {"tokens": n, "nll": nll.sum().item() / max(n, 1), "kl": kl.mean().item(),
                      "bow": bow.mean().item(), "kl_weight": weight}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        totals = torch.zeros(3, dtype=torch.float64)
        n_tokens = 0
        for start in range(0, len(self.valid), self.batch_size):
            batch = self.valid.batch(range(start, min(start + self.batch_size, len(self.valid)))).to(self.device)
            nll, kl, bow, n = self.terms(model, batch, sample=False)
            totals += torch.stack([nll.sum(), kl.sum(), bow.sum()]).double().cpu()
            n_tokens += n
        nll, kl, bow = (totals / max(len(self.valid), 1)).tolist()
        return {"criterion": nll + kl, "nll_per_response": nll, "kl": kl, "bow": bow,
                "nll": float(totals[0]) / max(n_tokens, 1)}

    def finish(self, model, summary: dict):
        return model, {"best_valid_negative_elbo": summary["best_criterion"], "full_kl_step": self.full_kl_step,
                       "bow_weight": self.bow_weight}
