"""Pretrained Hugging Face models as the target (issue 16): `hf:PATH`, a local transformers directory.

A causal LM (GPT-2, DialoGPT, Qwen, ...) or an encoder-decoder (BART, T5) with its own tokenizer, loaded
offline only (`local_files_only=True`; a missing or unreadable directory is one CldgError line naming it).

    model = load_hf_model("hf:/models/dialogpt-small", device, lora=LoraOptions(r=8))
    batch = model.make_batch(contexts, responses)      # contexts: list[list[str]] (oldest turn first)
    logp = model.sequence_logprobs(batch)               # [B] log p(r|c), summed over the response's tokens
    ref = model.reference_logprobs(batch)               # the same with the LoRA adapters disabled (no grad)
    texts = model.generate(contexts, DecodeConfig(method="beam", beam_size=4))

How a dialogue becomes tokens:
- causal LM with a chat template: the turns alternate user/assistant so that the last turn is the user's;
  the prompt is the template with the generation prompt, the response is what the template adds for the
  assistant's turn (its end-of-turn tokens included). Without a template (GPT-2, DialoGPT): every turn is
  followed by the EOS token and the response is its tokens + EOS. Prompts are left-padded, responses
  right-padded, so the response positions line up across the batch (position ids follow the mask).
- encoder-decoder: the encoder reads the turns joined with the EOS token (the tokenizer adds its own
  specials); the labels are the tokenizer's encoding of the response (+ EOS when it adds none), and the
  decoder reads them shifted right after `decoder_start_token_id`.
Contexts are cut on the left to `max_context_tokens`, responses on the right to `max_response_tokens`.

The log-probabilities are computed in float32 from the logits; the forward pass runs under bf16 autocast
on CUDA (as the reference cache and the trainer do). With LoRA (peft) only the adapters train and the base
with its adapters disabled is the reference: `reference_logprobs` needs no second copy of the model.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cldg.errors import CldgError

from cldg.choices import HF_PREFIX as PREFIX, hf_path, is_hf_spec  # noqa: F401 (hf_path, is_hf_spec: re-exported)


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters (peft) on the pretrained model; None target modules: peft's default for the architecture."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None


@dataclass
class HFBatch:
    """Model inputs and the response tokens they score. targets/target_mask [B, T] are the response's tokens;
    causal: `input_ids` = left-padded prompt (width `prompt_len`) + right-padded response;
    encoder-decoder: `input_ids` is the encoder's input and `decoder_input_ids` the shifted response."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    prompt_len: int = 0
    position_ids: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None

    def to(self, device) -> HFBatch:
        move = (lambda t: None if t is None else t.to(device))
        return HFBatch(move(self.input_ids), move(self.attention_mask), move(self.targets), move(self.target_mask),
                       self.prompt_len, move(self.position_ids), move(self.decoder_input_ids))

    @property
    def size(self) -> int:
        return self.targets.size(0)

    @property
    def tokens(self) -> int:
        return int(self.target_mask.sum())


@dataclass
class ResponseOutput:
    """What the model gives at the response positions: `logits` [B, T, V] (position t predicts targets[:, t]),
    `targets`, `mask` [B, T] and, when asked, `hidden` [B, T, H]: the last layer's state at the position that
    predicts token t (after reading the token before it), the representation SimCTG and contrastive search use."""

    logits: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    hidden: torch.Tensor | None = None

    def token_logprobs(self) -> torch.Tensor:
        """log p(target_t | ...) in float32, 0 where the mask is off. [B, T]"""
        logp = F.log_softmax(self.logits.float(), dim=-1).gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)
        return logp.masked_fill(~self.mask, 0.0)


def _pad_rows(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = True
    return ids, mask


class HFDialogueModel(nn.Module):
    """A transformers model and its tokenizer, scoring and generating dialogue responses (see the module doc)."""

    def __init__(self, hf_model, tokenizer, path: Path | str = "", max_context_tokens: int = 256,
                 max_response_tokens: int = 64, lora: LoraOptions | None = None):
        super().__init__()
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.path = str(path)
        self.name = f"{PREFIX}{path}"
        self.lora = lora
        self.max_context_tokens, self.max_response_tokens = max_context_tokens, max_response_tokens
        config = hf_model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
        if self.eos_id is None:
            raise CldgError(f"{path}: the tokenizer has no EOS token (cldg ends every response with it)")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.chat_template = getattr(tokenizer, "chat_template", None) if not self.is_encoder_decoder else None
        self.eos_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        """The ids that end a response: EOS, the generation config's EOS ids (a chat model's several) and the chat
        template's end of turn (what follows the assistant's content: <|im_end|>, <|eot_id|>, <end_of_turn>)."""
        saved = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        ids = [self.eos_id] + ([saved] if isinstance(saved, int) else list(saved or []))
        if self.chat_template:
            try:
                messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
                prompt = self._render(messages[:1], True)
                full = self._render(messages, False)
                after = full[len(prompt):].split("hello", 1)[1] if full.startswith(prompt) else ""
                ids += [i for i in self._ids(after) if self.tokenizer.decode([i]).strip()][:1]
            except Exception:  # a template that cannot render this: EOS and the generation config's only
                pass
        return list(dict.fromkeys(int(i) for i in ids))

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_output_embeddings().weight.size(0))

    def state_dict(self, *args, **kwargs):
        """The weights, with tied ones (GPT-2's lm_head and wte) as separate copies: safetensors refuses tensors
        that share memory, and the trainer checkpoints with it. Loading writes the same values twice."""
        state = super().state_dict(*args, **kwargs)
        seen: set[int] = set()
        for key, value in state.items():
            if value.data_ptr() in seen:
                state[key] = value.clone()
            seen.add(value.data_ptr())
        return state

    def config_dict(self) -> dict[str, Any]:
        lora = None if self.lora is None else {**vars(self.lora), "target_modules": self.lora.target_modules}
        return {"source": self.path, "max_context_tokens": self.max_context_tokens,
                "max_response_tokens": self.max_response_tokens, "lora": lora}

    def add_adapters(self, lora: LoraOptions) -> HFDialogueModel:
        """Fine-tune LoRA adapters only (the base frozen; with the adapters disabled it is the reference)."""
        if self.lora is not None:
            raise CldgError(f"{self.name}: already has LoRA adapters")
        self.hf, self.lora = add_lora(self.hf, lora, self.path), lora
        return self

    def save(self, directory: Path | str) -> None:
        """A cldg model artifact: the transformers directory `hf/` (LoRA adapters merged into the weights, so the
        artifact stands alone) and `model.json` {"name": "hf", "config", "vocab_size"}."""
        import copy
        import json

        directory = Path(directory)
        hf = copy.deepcopy(self.hf).merge_and_unload() if self.lora is not None else self.hf
        hf.save_pretrained(directory / "hf", safe_serialization=True)
        self.tokenizer.save_pretrained(directory / "hf")
        meta = {"name": "hf", "config": self.config_dict(), "vocab_size": self.vocab_size}
        (directory / "model.json").write_text(json.dumps(meta, indent=2))

    # -- text -> token ids -----------------------------------------------------------------------------------
    def _messages(self, turns: list[str]) -> list[dict[str, str]]:
        n = len(turns)
        return [{"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        """The chat template's text; a context whose first turn is the assistant's (an even number of turns) that
        the template refuses (Mistral's, Gemma's: roles must alternate from the user) loses that first turn."""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as err:
            if messages and messages[0]["role"] == "assistant":
                return self._render(messages[1:], generation_prompt)
            raise CldgError(f"{self.name}: its chat template refuses the context: {_one_line(err)}") from None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_context(self, turns: list[str]) -> list[int]:
        """The prompt (causal) or encoder input (encoder-decoder) of a context, cut on the left."""
        if self.is_encoder_decoder:
            ids = self.tokenizer(self.tokenizer.eos_token.join(turns))["input_ids"]
        elif self.chat_template:
            ids = self._ids(self._render(self._messages(turns), True))
        else:
            ids = [i for t in turns for i in self._ids(t) + [self.eos_id]]
        ids = ids[-self.max_context_tokens:]
        return ids or [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id]

    def encode_response(self, turns: list[str], response: str) -> list[int]:
        """The response's tokens as the model emits them (ending with EOS or the template's end of turn)."""
        if self.is_encoder_decoder:
            ids = self.tokenizer(text_target=response)["input_ids"]
            ids = ids if ids and ids[-1] == self.eos_id else ids + [self.eos_id]
        elif self.chat_template:
            messages = self._messages(turns)
            prompt = self._render(messages, True)
            full = self._render(messages + [{"role": "assistant", "content": response}], False)
            ids = self._ids(full[len(prompt):]) if full.startswith(prompt) else self._ids(response) + [self.eos_id]
        else:
            ids = self._ids(response) + [self.eos_id]
        return ids[:self.max_response_tokens]

    def make_batch(self, contexts: list[list[str]], responses: list[str]) -> HFBatch:
        """One batch of (context, response) pairs, on the model's device."""
        return self.batch_from_ids(contexts, [self.encode_response(c, r) for c, r in zip(contexts, responses)])

    def batch_from_ids(self, contexts: list[list[str]], resp: list[list[int]]) -> HFBatch:
        """One batch of contexts and response token ids taken as they are (e.g. generated ones), on the device."""
        prompts = [self.encode_context(c) for c in contexts]
        targets, target_mask = _pad_rows(resp, self.pad_id, left=False)
        if self.is_encoder_decoder:
            input_ids, attention_mask = _pad_rows(prompts, self.pad_id, left=False)
            start = self.hf.config.decoder_start_token_id
            start = self.pad_id if start is None else start
            decoder_input_ids = torch.cat([torch.full((len(resp), 1), start, dtype=torch.long), targets[:, :-1]], 1)
            batch = HFBatch(input_ids, attention_mask, targets, target_mask, decoder_input_ids=decoder_input_ids)
        else:
            p_ids, p_mask = _pad_rows(prompts, self.pad_id, left=True)
            input_ids, attention_mask = torch.cat([p_ids, targets], 1), torch.cat([p_mask, target_mask], 1)
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
            batch = HFBatch(input_ids, attention_mask, targets, target_mask, p_ids.size(1), position_ids)
        return batch.to(self.device)

    # -- scoring ---------------------------------------------------------------------------------------------
    def response_output(self, batch: HFBatch, hidden: bool = False) -> ResponseOutput:
        """Logits (and the last hidden states) at the response positions; bf16 autocast on CUDA."""
        device = batch.input_ids.device
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if self.is_encoder_decoder:
                out = self.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                              decoder_input_ids=batch.decoder_input_ids, output_hidden_states=hidden, use_cache=False)
                logits = out.logits
                states = out.decoder_hidden_states[-1] if hidden else None
            else:
                keep = {"logits_to_keep": batch.targets.size(1) + 1} if self._keeps_logits() else {}
                out = self.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                              position_ids=batch.position_ids, output_hidden_states=hidden, use_cache=False, **keep)
                window = slice(batch.prompt_len - 1, batch.prompt_len - 1 + batch.targets.size(1))
                logits = out.logits[:, :-1] if keep else out.logits[:, window]  # the last T + 1 positions
                states = out.hidden_states[-1][:, window] if hidden else None
        return ResponseOutput(logits, batch.targets, batch.target_mask, states)

    def _keeps_logits(self) -> bool:
        """Whether the causal model's forward takes logits_to_keep (transformers >= 4.50's LMs): the logits of the
        response window only, not of the whole prompt + response ([B, P + T, V] then sliced)."""
        base = self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf
        return "logits_to_keep" in inspect.signature(base.forward).parameters

    def forward(self, batch: HFBatch) -> torch.Tensor:
        """Logits [B, T, V] at the response positions (teacher forcing), as DialogueModel.forward."""
        return self.response_output(batch).logits

    def sequence_logprobs(self, batch: HFBatch) -> torch.Tensor:
        """log p(r|c) [B]: the sum over the response's tokens (EOS included), float32, with grad."""
        return self.response_output(batch).token_logprobs().sum(-1)

    @torch.no_grad()
    def reference_logprobs(self, batch: HFBatch) -> torch.Tensor:
        """log p(r|c) [B] under the base model with the LoRA adapters disabled, in eval mode (no dropout)."""
        if self.lora is None:
            raise CldgError(f"{self.name}: no LoRA adapters, so the reference is a separate model (load it too)")
        was_training = self.training
        self.eval()
        try:
            with self.hf.disable_adapter():
                return self.sequence_logprobs(batch)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score(self, contexts: list[list[str]], responses: list[str], batch_size: int = 32) -> list[float]:
        """log p(r|c) of each pair (eval mode, batched), e.g. for a reference cache."""
        self.eval()
        out: list[float] = []
        for i in range(0, len(contexts), batch_size):
            batch = self.make_batch(contexts[i:i + batch_size], responses[i:i + batch_size])
            out += self.sequence_logprobs(batch).cpu().tolist()
        return out

    @torch.no_grad()
    def perplexity(self, contexts: list[list[str]], responses: list[str], batch_size: int = 32) -> float:
        """exp(mean NLL per response token, in the model's own tokens) of the responses given their contexts."""
        import math

        self.eval()
        total, tokens = 0.0, 0
        for i in range(0, len(contexts), batch_size):
            batch = self.make_batch(contexts[i:i + batch_size], responses[i:i + batch_size])
            total -= float(self.sequence_logprobs(batch).sum())
            tokens += batch.tokens
        return math.exp(min(total / max(tokens, 1), 50.0))

    # -- generation ------------------------------------------------------------------------------------------
    def generation_kwargs(self, cfg) -> dict[str, Any]:
        """transformers `generate` arguments for a cldg DecodeConfig (greedy, beam, topk, nucleus).

        Every argument that changes decoding is given, the ones cldg has no option for at their neutral value:
        `generate` fills each one left out from the directory's generation_config.json (BART's 3-gram blocking,
        a chat model's repetition penalty or sampling), and `generate_ids` hides that file's decoding settings
        anyway (`clean_generation_config`). length_penalty is transformers' own (beam score / length**alpha), not
        the GNMT penalty of cldg's models."""
        kw: dict[str, Any] = {"max_new_tokens": cfg.max_len, "min_new_tokens": cfg.min_len,
                              "use_cache": True, "pad_token_id": self.pad_id, "eos_token_id": self.eos_ids,
                              "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
                              "no_repeat_ngram_size": cfg.no_repeat_ngram, "num_return_sequences": 1,
                              "length_penalty": 1.0, "early_stopping": False, "renormalize_logits": False}
        if cfg.method in ("greedy", "beam"):  # no sampling argument: transformers flags them with do_sample off
            kw.update(do_sample=False, num_beams=cfg.beam_size if cfg.method == "beam" else 1)
            if cfg.method == "beam":
                kw["length_penalty"] = cfg.length_penalty
        elif cfg.method in ("topk", "nucleus"):
            kw.update(do_sample=True, temperature=cfg.temperature, num_beams=1, typical_p=1.0, epsilon_cutoff=0.0,
                      eta_cutoff=0.0, top_k=cfg.top_k if cfg.method == "topk" else 0,
                      top_p=cfg.top_p if cfg.method == "nucleus" else 1.0)
        else:
            raise CldgError(f"decoding {cfg.method!r}: not available for {self.name} (greedy, beam, topk, nucleus)")
        if cfg.block_context_ngram and not self.is_encoder_decoder:
            raise CldgError(f"--block-context-ngram: not available for the causal LM {self.name} (set it to 0)")
        if self.is_encoder_decoder:
            kw["encoder_no_repeat_ngram_size"] = cfg.block_context_ngram
        return kw

    def clean_generation_config(self):
        """The directory's generation config with only what describes the model's format (start, forced BOS/EOS,
        special ids) kept: no decoding setting of the file (sampling, penalties, n-gram blocking, bad words,
        suppressed tokens, lengths) can reach `generate` unasked."""
        from transformers import GenerationConfig

        saved = getattr(self.hf, "generation_config", None)
        keep = ("decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id", "bos_token_id",
                "eos_token_id", "pad_token_id")
        return GenerationConfig(**{k: getattr(saved, k) for k in keep if getattr(saved, k, None) is not None})

    @torch.no_grad()
    def generate_ids(self, contexts: list[list[str]], cfg=None, keep_stop: bool = False) -> list[list[int]]:
        """Response token ids per context (EOS and what follows stripped; with keep_stop, the stop id that ended
        the response kept, and nothing added where the length limit ended it), through `generate` with the KV
        cache."""
        from cldg.decoding.search import DecodeConfig

        cfg = cfg or DecodeConfig()
        self.eval()
        prompts = [self.encode_context(c) for c in contexts]
        ids, mask = _pad_rows(prompts, self.pad_id, left=not self.is_encoder_decoder)
        ids, mask = ids.to(self.device), mask.long().to(self.device)
        kw, saved = self.generation_kwargs(cfg), self.hf.generation_config
        self.hf.generation_config = self.clean_generation_config()  # generate fills what kw leaves out from it
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out = self.hf.generate(input_ids=ids, attention_mask=mask, **kw)
        finally:
            self.hf.generation_config = saved
        out = out[:, 1:] if self.is_encoder_decoder else out[:, ids.size(1):]
        result = []
        for row in out.tolist():
            ends = [k for k, token in enumerate(row) if token in self.eos_ids]
            result.append(row[:ends[0] + int(keep_stop)] if ends else row)
        return result

    def generate(self, contexts: list[list[str]], cfg=None) -> list[str]:
        """Generated response texts (special tokens skipped)."""
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in self.generate_ids(contexts, cfg)]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(err).__name__


def load_hf_model(spec: str, device: Any = "cpu", lora: LoraOptions | None = None, max_context_tokens: int = 256,
                  max_response_tokens: int = 64) -> HFDialogueModel:
    """Load `hf:PATH` offline (float32 weights; bf16 autocast on CUDA), with LoRA adapters when `lora` is given."""
    path = hf_path(spec)
    if not path.is_dir():
        raise CldgError(f"{path}: no such directory (hf:PATH names a local transformers model directory)")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its weight-loading bar would cut through cldg's progress output

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        hf_model = auto.from_pretrained(path, config=config, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CldgError(f"{path}: cannot load a transformers model: {_one_line(err)}") from None
    tokenizer.truncation_side = "left"
    if lora is not None:
        hf_model = add_lora(hf_model, lora, path)
    return HFDialogueModel(hf_model, tokenizer, path, max_context_tokens, max_response_tokens, lora).to(device)


def load_saved_hf_model(directory: Path | str, meta: dict, device: Any = "cpu") -> HFDialogueModel:
    """An `hf` model artifact written by `HFDialogueModel.save` (eval mode, without adapters: they are merged)."""
    cfg = meta["config"]
    model = load_hf_model(f"{PREFIX}{Path(directory) / 'hf'}", device, max_context_tokens=cfg["max_context_tokens"],
                          max_response_tokens=cfg["max_response_tokens"])
    return model.eval()


def saved_tokenization_key(directory: Path | str) -> dict[str, Any]:
    """What decides the token ids of a (context, response) under a saved `hf` model artifact: its tokenizer files,
    the model kind and its token limits. A reference cache made with one tokenization must not serve another, so
    the refcache fingerprint holds this."""
    import hashlib
    import json

    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text())
    config = json.loads((directory / "hf" / "config.json").read_text())
    digest = hashlib.sha256()
    for file in sorted((directory / "hf").glob("*")):
        if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return {"tokenizer_sha256": digest.hexdigest(), "encoder_decoder": bool(config.get("is_encoder_decoder")),
            "max_context_tokens": meta["config"]["max_context_tokens"],
            "max_response_tokens": meta["config"]["max_response_tokens"]}


HF_DIGESTS = ".hf-digests.json"  # in the workdir: {directory: {"files": [[name, size, mtime, ctime, inode]...], ...}}


def directory_digest(spec: str, workdir: Path | None = None) -> str:
    """sha256 over the names and contents of the files of `hf:PATH`'s directory: a run on it is fingerprinted by
    what the directory holds, not by its name (a missing or unreadable directory is one CldgError naming it).

    With a workdir the digest is remembered in WORKDIR/.hf-digests.json under every file's size, mtime, ctime and
    inode (cldg.filestat, as artifact verification does), so a multi-GB model is hashed once, not on every
    pretrain / evaluate; any write to a file of the directory, or a file added or removed, makes the next call hash
    it again."""
    import hashlib
    import time

    from cldg.filestat import stat_key, written_before

    path = hf_path(spec)
    if not path.is_dir():
        raise CldgError(f"{path}: no such directory (hf:PATH names a local transformers model directory)")
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        stats = [[str(f.relative_to(path)), *stat_key(f.stat())] for f in files]
    except OSError as err:
        raise CldgError(f"{path}: cannot read the model directory: {_one_line(err)}") from None
    cache = Path(workdir) / HF_DIGESTS if workdir is not None else None
    key = str(path.resolve())
    if cache is not None:
        e = _read_digests(cache).get(key)
        if (isinstance(e, dict) and e.get("files") == stats and isinstance(e.get("checked_ns"), int)
                and all(written_before(s[2], e["checked_ns"]) for s in stats)):
            return e["sha256"]
    checked_ns = time.time_ns()
    digest = hashlib.sha256()
    try:
        for file in files:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    except OSError as err:
        raise CldgError(f"{path}: cannot read the model directory: {_one_line(err)}") from None
    sha = digest.hexdigest()
    if cache is not None and cache.parent.is_dir():  # only a cache: a workdir that cannot be written hashes again
        _remember_digest(cache, key, {"files": stats, "sha256": sha, "checked_ns": checked_ns})
    return sha


def _read_digests(cache: Path) -> dict:
    """WORKDIR/.hf-digests.json's entries ({} when it is missing or unreadable: it is only a cache)."""
    import json

    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember_digest(cache: Path, key: str, entry: dict) -> None:
    """Add one directory's entry to WORKDIR/.hf-digests.json under an flock (two runs at once keep both entries),
    dropping directories that no longer exist."""
    import fcntl
    import json
    import os

    tmp = cache.with_name(f"{HF_DIGESTS}.{os.getpid()}.tmp")
    try:
        with open(cache.with_name(HF_DIGESTS + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = {k: v for k, v in _read_digests(cache).items() if Path(k).is_dir()}
            entries[key] = entry
            tmp.write_text(json.dumps(entries, separators=(",", ":")))
            os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def add_lora(hf_model, lora: LoraOptions, path: Path | str = ""):
    """The model with LoRA adapters (peft): the base frozen, only the adapters trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if getattr(hf_model.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM
    targets = list(lora.target_modules) if lora.target_modules else None
    conv1d = getattr(hf_model.config, "model_type", "") == "gpt2"  # GPT-2's projections are Conv1D (weights transposed)
    try:
        return get_peft_model(hf_model, LoraConfig(task_type=task, r=lora.r, lora_alpha=lora.alpha, fan_in_fan_out=conv1d,
                                                   lora_dropout=lora.dropout, target_modules=targets))
    except ValueError as err:
        raise CldgError(f"{path}: cannot add LoRA adapters ({_one_line(err)}); name the target modules") from None
