"""Which released method wrote a checkpoint, told by its keys, so that a file given to the wrong
method is refused with the name of the right one instead of being half loaded."""

from __future__ import annotations

from collections.abc import Iterable

from tbps_bench.errors import BenchError

#: how each method's authors write its name
DISPLAY = {
    "rasa": "RaSa",
    "mars": "MARS",
    "aptm": "APTM",
    "irra": "IRRA",
    "rde": "RDE",
    "plot": "PLOT",
    "tbps-clip": "TBPS-CLIP",
}


def identify(keys: Iterable[str]) -> str | None:
    """The tbps-bench method whose released files have these ``model`` keys, or None."""
    keys = [k.removeprefix("module.") for k in keys]
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("text_encoder.bert.") and has("vision_encoder.layers."):
        return "aptm"
    if has("text_encoder.bert.") and has("visual_encoder."):
        layer0_cross = has("text_encoder.bert.encoder.layer.0.crossattention.")
        return "mars" if layer0_cross or has("visual_decoder.") else "rasa"
    if has("base_model.") and (has("slot_attention.") or has("slots")):
        return "plot"
    if has("encode_text.") and has("visual."):
        return "tbps-clip"
    if has("base_model."):
        return "rde" if has("visul_emb_layer.") and has("texual_emb_layer.") else "irra"
    return None


def described(keys: Iterable[str]) -> str | None:
    """``"a RaSa checkpoint: use -m rasa"`` for a known layout, else None."""
    method = identify(keys)
    return f"a checkpoint of {DISPLAY[method]}: use -m {method}" if method else None


def require(keys: Iterable[str], method: str, source: str, expected: str) -> None:
    """One line unless these ``model`` keys are ``method``'s layout: what the file lacks
    (``expected``) and, for another known layout, the method to use."""
    found = identify(keys)
    if found != method:
        named = f"a checkpoint of {DISPLAY[found]}: use -m {found}" if found else f"not a {DISPLAY[method]} checkpoint"
        raise BenchError(f"{source} has no {expected}; it is {named}")
