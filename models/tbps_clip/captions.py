"""TBPS-CLIP's caption rule, applied before CLIP's BPE: lower case; each of ``. ! " ( ) * # : ; ~``
becomes a space; runs of two or more whitespace characters become one space; a trailing newline and
surrounding spaces go; the first ``MAX_WORDS`` space-separated words are kept."""

from __future__ import annotations

import re

from tbps_models.clip_towers.preset import CaptionCleaning

#: the word limit of the authors' test loader (fixed in their code, not the context length)
MAX_WORDS = 77
_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def clean_caption(caption: str, context: int = 77) -> str:
    """The caption as TBPS-CLIP's tokenizer receives it (``context`` is not used: the cut is in words)."""
    text = _WHITESPACE_RUN.sub(" ", _PUNCTUATION.sub(" ", caption.lower()))
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:MAX_WORDS]) if len(words) > MAX_WORDS else text


TBPS_CLIP_CLEANING = CaptionCleaning("tbps-clip", clean_caption)
