"""`cldg chat`: talk to a trained model in the terminal; the conversation so far is the context."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.prompt import Prompt


def chat_session(model_spec: str, workdir: Path, reference_spec: str | None, decoding, device_name: str, seed: int,
                 read: Callable[[], str] | None = None, max_turns: int = 0) -> list[dict]:
    """Loop: read a user turn, answer with the model (and the reference beside it). Ends on an empty
    line, /quit or EOF; /reset forgets the history. Returns the transcript."""
    import torch

    from cldg.artifacts import ArtifactStore
    from cldg.data.batching import collate
    from cldg.decoding.search import generate
    from cldg.models import load_model
    from cldg.models.hf import is_hf_spec, load_hf_model
    from cldg.model_artifacts import model_limits, model_prepare, resolve_model
    from cldg.progress import console
    from cldg.runtime import resolve_device
    from cldg.text.tokenizer import DialogueTokenizer

    store = ArtifactStore(workdir)
    device = resolve_device(device_name)
    loaded = []
    for label, spec in [("model", model_spec)] + ([("reference (MLE)", reference_spec)] if reference_spec else []):
        if is_hf_spec(spec):  # a pretrained transformers directory as it is: its own tokenizer, no artifact
            loaded.append((label, load_hf_model(spec, device).eval(), None, None))
            continue
        art = resolve_model(store, spec)
        tok = DialogueTokenizer.load(model_prepare(art).file("tokenizer.json"))
        loaded.append((label, load_model(art.path, device), tok, model_limits(art)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # hf: models sample from the global generator
    read = read or (lambda: Prompt.ask("[bold cyan]you[/]", console=console))
    console.print(f"Chatting with {model_spec}" + (" (reference beside it)" if reference_spec else "")
                  + ". Empty line or /quit ends, /reset forgets.")
    history: list[str] = []
    transcript = []
    while True:
        try:
            text = read().strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text in ("", "/quit", "/exit"):
            break
        if text == "/reset":
            history = []
            console.print("[dim]history cleared[/]")
            continue
        history.append(text)
        turn = {"user": text}
        for i, (label, model, tok, limits) in enumerate(loaded):
            if hasattr(model, "make_batch"):  # an hf: model (directory or artifact): its generate() and tokenizer
                answer = model.generate([history], decoding)[0] or "..."
            else:
                batch = collate(tok, [history], None, limits).to(device)
                answer = tok.detokenize(tok.decode_tokens(generate(model, batch, decoding, gen)[0])) or "..."
            turn[label] = answer
            console.print(f"[bold {'green' if i == 0 else 'yellow'}]{label}:[/] {answer}")
        history.append(turn["model"])
        transcript.append(turn)
        if max_turns and len(transcript) >= max_turns:
            break
    return transcript
