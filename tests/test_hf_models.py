"""Pretrained Hugging Face models through `hf:PATH` (cldg/models/hf.py), on a tiny random GPT-2 and a tiny BART
built here (tokenizer trained on fixture text with `tokenizers`): log p(r|c) equals a direct computation from
the model's logits, generation equals a plain greedy loop, the LoRA reference equals the base model, and a bad
directory is one clean error. No network."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from cldg.errors import CldgError  # noqa: E402

TEXT = [
    "hello there how are you", "i am fine thanks and you", "what did you do today", "i went to the park",
    "the weather is nice", "do you like music", "yes i play the guitar", "that sounds fun", "see you later",
    "good night", "user assistant", "where are you from", "i live near the sea", "what is your favourite food", "pizza of course",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2

CONTEXTS = [["hello there", "i am fine thanks and you"], ["do you like music"],
            ["where are you from", "i live near the sea", "what is your favourite food"]]
RESPONSES = ["i went to the park today", "yes", "pizza of course and you"]


def make_tokenizer(template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    if template:  # BART-style: <s> text </s>
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_gpt2(path):
    """A random 2-layer, 16-d GPT-2 and its tokenizer saved into `path`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = make_tokenizer(template=False)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=2, n_head=2, bos_token_id=BOS,
                     eos_token_id=EOS, pad_token_id=PAD)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_bart(path):
    """A random 1+1-layer, 16-d BART and its tokenizer (<s> text </s>) saved into `path`."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(1)
    tok = make_tokenizer(template=True)
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                     pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
                     forced_bos_token_id=None, forced_eos_token_id=None)
    BartForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    return build_bart(tmp_path_factory.mktemp("bart"))


def raw_model(path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    auto = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()


def words(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in text.split()]


def direct_causal(raw, tok, context, response) -> float:
    """DialoGPT layout written out: every turn + EOS, then response + EOS; sum of log-softmax at the response."""
    prompt = [i for turn in context for i in words(tok, turn) + [EOS]]
    resp = words(tok, response) + [EOS]
    logits = raw(torch.tensor([prompt + resp])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return sum(float(logp[len(prompt) - 1 + t, r]) for t, r in enumerate(resp))


def direct_seq2seq(raw, tok, context, response) -> float:
    """BART layout written out: <s> turn </s> turn </s> in, labels <s> response </s>; HF shifts the labels itself."""
    enc = [BOS] + [i for k, turn in enumerate(context) for i in ([EOS] if k else []) + words(tok, turn)] + [EOS]
    labels = [BOS] + words(tok, response) + [EOS]
    logits = raw(input_ids=torch.tensor([enc]), labels=torch.tensor([labels])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return sum(float(logp[t, r]) for t, r in enumerate(labels))


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_sequence_logprobs_equal_a_direct_computation_from_the_logits(kind, gpt2_dir, bart_dir):
    from cldg.models.hf import load_hf_model

    path = gpt2_dir if kind == "gpt2" else bart_dir
    model = load_hf_model(f"hf:{path}").eval()
    assert model.is_encoder_decoder == (kind == "bart")
    raw, direct = raw_model(path), (direct_causal if kind == "gpt2" else direct_seq2seq)
    with torch.no_grad():
        got = model.sequence_logprobs(model.make_batch(CONTEXTS, RESPONSES))  # padded: three lengths in one batch
        want = [direct(raw, model.tokenizer, c, r) for c, r in zip(CONTEXTS, RESPONSES)]
    assert got.shape == (3,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert len(set(round(v, 3) for v in want)) == 3  # three different values: a row mix-up would show
    assert model.score(CONTEXTS, RESPONSES, batch_size=2) == pytest.approx(want, abs=1e-4)


def test_sequence_logprobs_carry_the_gradient(gpt2_dir):
    from cldg.models.hf import load_hf_model

    model = load_hf_model(f"hf:{gpt2_dir}")
    model.sequence_logprobs(model.make_batch(CONTEXTS[:2], RESPONSES[:2])).sum().backward()
    assert model.hf.transformer.wte.weight.grad is not None and model.hf.transformer.wte.weight.grad.abs().sum() > 0


def test_a_causal_model_computes_the_logits_of_the_response_window_only(gpt2_dir):
    # logits_to_keep = T + 1: the prompt's logits ([B, P + T, V] before) are never computed; same numbers
    from cldg.models.hf import load_hf_model

    model = load_hf_model(f"hf:{gpt2_dir}").eval()
    batch = model.make_batch(CONTEXTS, RESPONSES)
    shapes = []
    model.hf.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.logits.shape)))
    with torch.no_grad():
        got = model.sequence_logprobs(batch)
        full = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                        position_ids=batch.position_ids, use_cache=False).logits
    T = batch.targets.size(1)
    assert shapes[0][1] == T + 1 < batch.input_ids.size(1)
    logp = torch.log_softmax(full[:, batch.prompt_len - 1:batch.prompt_len - 1 + T].float(), -1)
    want = (logp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1) * batch.target_mask).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sequence_level_unlikelihood_penalises_the_generated_ids_themselves(gpt2_dir):
    # before: the greedy ids were decoded, tokenized again and given an EOS even where max_len cut them
    from types import SimpleNamespace

    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model
    from cldg.training.recipes.pairs import HFScorer, PairBatch
    from cldg.training.recipes.unlikelihood import UnlikelihoodRecipe

    model = load_hf_model(f"hf:{gpt2_dir}")
    scorer = HFScorer(model)
    cfg = SimpleNamespace(max_decode_len=4, ngram=1, sequence_level_rate=1.0, alpha=1.0)
    recipe = UnlikelihoodRecipe(scorer, (CONTEXTS, RESPONSES), (CONTEXTS, RESPONSES), 3, 1, model.device, cfg)
    seen = []
    output = scorer.output
    scorer.output = lambda m, batch, hidden=False: seen.append(batch) or output(m, batch, hidden)
    loss, figures = recipe.loss(model, PairBatch(None, CONTEXTS), 0)
    assert loss.requires_grad and model.training
    emitted = model.generate_ids(CONTEXTS, DecodeConfig(method="greedy", max_len=4))  # stop ids stripped
    want = [row + [model.eos_id] if len(row) < 4 else row for row in emitted]  # the stop id where one was emitted
    got = [row[m].tolist() for row, m in zip(seen[0].targets, seen[0].target_mask)]
    assert got == want and figures["tokens"] == sum(map(len, want))
    for row in want:  # EOS only where generated: a row the limit cut has 4 tokens and no stop id
        assert (row[-1] in model.eos_ids) or (len(row) == 4 and not set(row) & set(model.eos_ids))
    assert any(len(row) == 4 and row[-1] not in model.eos_ids for row in want)  # the case the old path got wrong
    assert want == model.generate_ids(CONTEXTS, DecodeConfig(method="greedy", max_len=4), keep_stop=True)


def greedy_by_hand(raw, tok, context, steps: int, seq2seq: bool) -> list[int]:
    """Argmax one token at a time, the whole sequence re-run each step (no cache, no padding)."""
    if seq2seq:
        enc = torch.tensor([tok(tok.eos_token.join(context))["input_ids"]])
        dec = [raw.config.decoder_start_token_id]
    else:
        dec = [i for turn in context for i in words(tok, turn) + [EOS]]
    start, out = len(dec), []
    for _ in range(steps):
        logits = raw(input_ids=enc, decoder_input_ids=torch.tensor([dec])).logits if seq2seq \
            else raw(torch.tensor([dec])).logits
        nxt = int(logits[0, -1].argmax())
        if nxt == EOS:
            break
        dec.append(nxt)
    out = dec[start:]
    return out


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_greedy_generation_equals_a_plain_greedy_loop(kind, gpt2_dir, bart_dir):
    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model

    path = gpt2_dir if kind == "gpt2" else bart_dir
    model = load_hf_model(f"hf:{path}")
    cfg = DecodeConfig(method="greedy", max_len=6, min_len=0)
    got = model.generate_ids(CONTEXTS, cfg)  # one batch, left-padded prompts for GPT-2, KV cache
    raw = raw_model(path)
    with torch.no_grad():
        want = [greedy_by_hand(raw, model.tokenizer, c, 6, kind == "bart") for c in CONTEXTS]
    assert got == want
    texts = model.generate(CONTEXTS, DecodeConfig(method="beam", beam_size=2, max_len=4, min_len=1))
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all(len(r) <= 4 for r in model.generate_ids(CONTEXTS, DecodeConfig(method="nucleus", max_len=4)))


def test_decoding_options_that_the_model_cannot_honour_are_one_clean_error(gpt2_dir):
    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model

    model = load_hf_model(f"hf:{gpt2_dir}")
    with pytest.raises(CldgError, match="block-context-ngram"):
        model.generate(CONTEXTS[:1], DecodeConfig(block_context_ngram=3))


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_lora_reference_logprobs_equal_the_base_model(kind, gpt2_dir, bart_dir):
    from cldg.models.hf import LoraOptions, load_hf_model

    path = gpt2_dir if kind == "gpt2" else bart_dir
    model = load_hf_model(f"hf:{path}", lora=LoraOptions(r=2, alpha=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.manual_seed(2)
    with torch.no_grad():  # move the adapters off zero, so the adapted model differs from the base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.train()
    batch = model.make_batch(CONTEXTS, RESPONSES)
    raw, direct = raw_model(path), (direct_causal if kind == "gpt2" else direct_seq2seq)
    with torch.no_grad():
        base = [direct(raw, model.tokenizer, c, r) for c, r in zip(CONTEXTS, RESPONSES)]
    ref = model.reference_logprobs(batch)
    assert not ref.requires_grad and model.training  # no grad; the training mode is given back
    assert ref.tolist() == pytest.approx(base, abs=1e-4)
    model.eval()
    with torch.no_grad():
        adapted = model.sequence_logprobs(batch)
    assert (adapted - ref).abs().max() > 1e-2  # the adapters are on outside reference_logprobs


def test_reference_logprobs_without_lora_is_a_clean_error(gpt2_dir):
    from cldg.models.hf import load_hf_model

    model = load_hf_model(f"hf:{gpt2_dir}")
    with pytest.raises(CldgError, match="no LoRA adapters"):
        model.reference_logprobs(model.make_batch(CONTEXTS[:1], RESPONSES[:1]))


def test_a_chat_template_scores_what_the_template_adds_for_the_assistant(gpt2_dir, tmp_path):
    import shutil

    from cldg.models.hf import load_hf_model

    path = tmp_path / "chat"
    shutil.copytree(gpt2_dir, path)
    tok = make_tokenizer(template=False)
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant {% endif %}")
    tok.save_pretrained(path)
    model = load_hf_model(f"hf:{path}")
    ctx = ["hello there", "i am fine thanks and you"]
    prompt = model.encode_context(ctx)
    resp = model.encode_response(ctx, "see you later")
    # the last turn is the user's, the one before it the assistant's; the prompt ends with the generation prompt
    assert model.tokenizer.convert_ids_to_tokens(prompt) == [
        "<s>", "assistant", "hello", "there", "</s>", "<s>", "user", "i", "am", "fine", "thanks", "and", "you", "</s>",
        "<s>", "assistant"]
    assert model.tokenizer.convert_ids_to_tokens(resp) == ["see", "you", "later", "</s>"]


def test_a_missing_or_unreadable_directory_is_one_clean_error(tmp_path):
    from cldg.models.hf import load_hf_model

    with pytest.raises(CldgError) as err:
        load_hf_model(f"hf:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    for bad in (tmp_path / "broken", tmp_path):  # a garbled config, a directory with no model at all
        with pytest.raises(CldgError) as err:
            load_hf_model(f"hf:{bad}")
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CldgError, match="no directory named"):
        load_hf_model("hf:")


def test_a_directorys_digest_is_remembered_in_the_workdir_until_a_file_changes(tmp_path):
    """directory_digest(spec, workdir) hashes a model directory once: later calls trust WORKDIR/.hf-digests.json
    while every file's size, mtime, ctime and inode are unchanged, and hash again after a write or a new file."""
    import json
    import time

    from cldg.models.hf import HF_DIGESTS, directory_digest

    model, workdir = tmp_path / "model", tmp_path / "work"
    (model / "sub").mkdir(parents=True)
    workdir.mkdir()
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    old = time.time() - 60  # older than the cache's racy window
    for f in (model / "config.json", model / "sub" / "weights.bin"):
        os.utime(f, (old, old))
    spec = f"hf:{model}"
    plain = directory_digest(spec)
    assert directory_digest(spec, workdir) == plain
    cache = json.loads((workdir / HF_DIGESTS).read_text())
    assert cache[str(model.resolve())]["sha256"] == plain
    # the remembered digest is what is returned while nothing changed (planted here to see that nothing is reread)
    cache[str(model.resolve())]["sha256"] = "remembered"
    (workdir / HF_DIGESTS).write_text(json.dumps(cache))
    assert directory_digest(spec, workdir) == "remembered"
    with open(model / "sub" / "weights.bin", "ab") as fh:  # a write: hashed again
        fh.write(b"\x01")
    changed = directory_digest(spec, workdir)
    assert changed not in ("remembered", plain) and changed == directory_digest(spec)
    (model / "extra.txt").write_text("x")  # a new file: hashed again
    assert directory_digest(spec, workdir) == directory_digest(spec) != changed
    other = tmp_path / "other"  # a directory that is gone is forgotten at the next write
    other.mkdir()
    (other / "config.json").write_text("{}")
    directory_digest(f"hf:{other}", workdir)
    assert str(other.resolve()) in json.loads((workdir / HF_DIGESTS).read_text())
    import shutil

    shutil.rmtree(other)
    (model / "extra.txt").write_text("y")
    directory_digest(spec, workdir)
    assert set(json.loads((workdir / HF_DIGESTS).read_text())) == {str(model.resolve())}


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_the_directorys_generation_config_does_not_change_decoding(kind, gpt2_dir, bart_dir, tmp_path):
    """generate() fills every argument left out from generation_config.json: n-gram blocking, a repetition
    penalty, sampling or a minimum length saved with the model must not reach cldg's greedy decoding."""
    import shutil

    from transformers import GenerationConfig

    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model

    path = gpt2_dir if kind == "gpt2" else bart_dir
    leaky = tmp_path / "leaky"
    shutil.copytree(path, leaky)
    GenerationConfig(no_repeat_ngram_size=1, encoder_no_repeat_ngram_size=1, repetition_penalty=5.0, min_length=5,
                     do_sample=True, top_k=2, bad_words_ids=[[5]], suppress_tokens=[6], bos_token_id=BOS,
                     eos_token_id=EOS, pad_token_id=PAD,
                     decoder_start_token_id=EOS if kind == "bart" else None).save_pretrained(leaky)
    cfg = DecodeConfig(method="greedy", max_len=8, min_len=0)
    want = load_hf_model(f"hf:{path}").generate_ids(CONTEXTS, cfg)
    model = load_hf_model(f"hf:{leaky}")
    assert model.hf.generation_config.repetition_penalty == 5.0  # the file is read, and kept for saving
    assert model.generate_ids(CONTEXTS, cfg) == want
    assert model.hf.generation_config.repetition_penalty == 5.0
    assert kind == "bart" or any(len(r) != len(set(r)) for r in want)  # a repeat: 1-gram blocking would show


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_disable_dropout_makes_training_mode_compute_what_eval_mode_does(kind, gpt2_dir, bart_dir):
    """DPO/BCO/KTO's policy trains as the reference was scored: GPT-2's nn.Dropout modules and BART's float
    dropout rates (applied through F.dropout) all off, so train-mode log-probs equal eval-mode ones."""
    from cldg.models.hf import load_hf_model
    from cldg.training.recipes.pairs import disable_dropout

    model = load_hf_model(f"hf:{gpt2_dir if kind == 'gpt2' else bart_dir}")
    batch = model.make_batch(CONTEXTS, RESPONSES)
    with torch.no_grad():
        want = model.eval().sequence_logprobs(batch)
        torch.manual_seed(0)
        assert not torch.allclose(model.train().sequence_logprobs(batch), want, atol=1e-4)  # dropout 0.1 shows
        disable_dropout(model)
        assert torch.allclose(model.train().sequence_logprobs(batch), want, atol=1e-5)


def test_generation_stops_at_every_eos_id_of_the_generation_config(gpt2_dir, tmp_path):
    """A chat model's generation_config.json lists several EOS ids: any of them ends the response."""
    import shutil

    from transformers import GenerationConfig

    from cldg.decoding.search import DecodeConfig
    from cldg.models.hf import load_hf_model

    cfg = DecodeConfig(method="greedy", max_len=6, min_len=0)
    plain = load_hf_model(f"hf:{gpt2_dir}").generate_ids(CONTEXTS, cfg)
    row = next(r for r in plain if len(r) > 1)
    stop = row[1]  # a token greedy decoding emits second
    path = tmp_path / "two-eos"
    shutil.copytree(gpt2_dir, path)
    GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, stop], pad_token_id=PAD).save_pretrained(path)
    model = load_hf_model(f"hf:{path}")
    assert model.eos_ids == [EOS, stop]
    assert model.generate_ids(CONTEXTS, cfg) == [r[:r.index(stop)] if stop in r else r for r in plain]


def test_a_chat_templates_end_of_turn_ends_generation_and_a_leading_assistant_turn_is_dropped(gpt2_dir, tmp_path):
    """The template's end of turn (here <unk>, after each message) is a stop id; a template that refuses a first
    assistant turn (Mistral's, Gemma's: roles must alternate from the user) gets the context without it."""
    import shutil

    from cldg.models.hf import load_hf_model

    path = tmp_path / "chat"
    shutil.copytree(gpt2_dir, path)
    tok = make_tokenizer(template=False)
    tok.chat_template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must "
                         "alternate user/assistant/user/assistant/...') }}{% endif %}"
                         "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} <unk> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant {% endif %}")
    tok.save_pretrained(path)
    model = load_hf_model(f"hf:{path}")
    assert model.eos_ids == [EOS, 3]  # </s>, then <unk>: the template's end of turn
    ctx = ["hello there", "i am fine thanks and you"]  # even: the first turn is the assistant's
    assert model.tokenizer.convert_ids_to_tokens(model.encode_context(ctx)) == [
        "<s>", "user", "i", "am", "fine", "thanks", "and", "you", "<unk>", "<s>", "assistant"]
    assert model.tokenizer.convert_ids_to_tokens(model.encode_response(ctx, "see you later")) == [
        "see", "you", "later", "<unk>"]
    assert all(3 not in r and EOS not in r for r in model.generate_ids(CONTEXTS, None))
