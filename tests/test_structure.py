"""Issue 14's structural rules: options declared once, one trainer shape, short stage functions, and which
layers may make artifacts."""
from __future__ import annotations

import dataclasses

from typer.main import get_command


def test_decoding_options_are_declared_once_for_evaluate_chat_and_the_library():
    from cldg.cli import ChatDecodingOptions, app
    from cldg.decoding.options import DecodingOptions
    from cldg.decoding.search import DecodeConfig
    from cldg.stages import evaluate

    names = [f.name for f in dataclasses.fields(DecodingOptions)]
    assert issubclass(evaluate.Config, DecodingOptions)
    chat = {p.name for p in get_command(app).commands["chat"].params}
    assert set(names) <= chat and [f.name for f in dataclasses.fields(ChatDecodingOptions)] == names
    # the library's DecodeConfig has the same defaults (its `method` is the option `decoding`)
    assert DecodingOptions().decode_config() == DecodeConfig()
