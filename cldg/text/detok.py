"""Readable text from word tokens: "i ' m fine , thanks !" -> "i'm fine, thanks!".

The word-level tokenizer splits on `\\w+|[^\\w\\s]+`, so contractions, punctuation and hyphenated words
come out as separate tokens. For people (generations.jsonl, report.md, compare, chat) and for sacreBLEU,
which tokenizes raw text itself, the tokens are glued back by the usual English rules. The metrics of
the paper keep working on the tokens themselves.
"""
from __future__ import annotations

import re

# what follows an apostrophe in an English contraction or possessive
CLITICS = {"m", "s", "t", "re", "ve", "ll", "d", "em", "all", "n", "cause", "bout", "til"}
ATTACH_LEFT = re.compile(r"^[,;:%)\]}]$|^[.!?]+$")     # no space before: "word," "word!?" "(a)" "hmm..."
ATTACH_RIGHT = re.compile(r"^[(\[{$#@]+$")                 # no space after: "(word" "$5" "#tag"
WORD = re.compile(r"^\w+$")


def detokenize(tokens: list[str]) -> str:
    """Join word tokens into text (English rules; whitespace-segmented languages: use `" ".join`)."""
    out: list[str] = []
    glue_next = False  # the previous token asked the next one to follow without a space
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if not out:
            out.append(tok)
        elif glue_next:
            out[-1] += tok
        elif tok == "'" and prev is not None and WORD.match(prev) and nxt is not None and nxt in CLITICS:
            out[-1] += tok  # i ' m -> i'm (the clitic glues on through glue_next)
        elif tok == "-" and prev is not None and WORD.match(prev) and nxt is not None and WORD.match(nxt):
            out[-1] += tok  # well - known -> well-known
        elif ATTACH_LEFT.match(tok) and prev is not None and (WORD.match(prev[-1]) or prev in (")", "]", "}")):
            out[-1] += tok  # but "? !" stays apart: joined, it would read back as one token "?!"
        else:
            out.append(tok)
        glue_next = ((tok == "'" and nxt in CLITICS and prev is not None and WORD.match(prev) is not None)
                     or (tok == "-" and prev is not None and nxt is not None and WORD.match(prev) is not None
                         and WORD.match(nxt) is not None)
                     or (ATTACH_RIGHT.match(tok) is not None and nxt is not None))
    return " ".join(out)
