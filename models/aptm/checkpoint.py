"""Released APTM files: ``{"model": state_dict, "config": dict}``. The Swin and BERT sizes come from
the tensor shapes; the input size, word and token limits and ``k_test`` from the stored config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_models.albef.stored import bert_shape, read_checkpoint, sort_entries
from tbps_models.albef.text import BertShape
from tbps_models.aptm.swin import SwinShape, infer_swin
from tbps_models.layouts import described, identify

USED = ("vision_encoder.", "vision_proj.", "text_encoder.bert.", "text_proj.", "itm_head.")
#: the masked-language-model head and the contrastive temperature are used in training only
TRAINING_ONLY = ("text_encoder.cls.", "temp")
#: integer buffers the model builds itself (Swin's relative position index, BERT's position ids)
INDEX_BUFFERS = ("relative_position_index", "position_ids")
#: Swin's shift masks are stored buffers (0 / -100) that the model computes itself
DERIVED = (".attn_mask",)
#: the released configs (CUHK-PEDES, ICFG-PEDES, RSTPReid): 384 x 128, 56 words, 56 tokens, k_test 128
DEFAULTS = {"h": 384, "w": 128, "max_words": 56, "max_tokens": 56, "k_test": 128}


@dataclass(frozen=True)
class AptmShape:
    swin: SwinShape
    bert: BertShape
    embed_dim: int
    max_words: int
    max_tokens: int


@dataclass
class AptmCheckpoint:
    shape: AptmShape
    state: dict[str, torch.Tensor]
    ignored: dict[str, int]
    notes: list[str]
    k_test: int


def _config_int(config: dict[str, Any], key: str, notes: list[str]) -> int:
    value = config.get(key)
    if value is None:
        notes.append(f"no '{key}' in the stored config: {DEFAULTS[key]} (the released configs)")
        return DEFAULTS[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchError(f"the stored config's '{key}' is {value!r}; expected a positive integer")
    return value


def load_aptm(path: str | Path, heads: int | None = None) -> AptmCheckpoint:
    source = str(path)
    state, config = read_checkpoint(path, "an APTM checkpoint.pth")
    if identify(state) != "aptm":
        raise BenchError(f"{source} is {described(state) or 'not an APTM checkpoint'} (-m aptm reads APTM files)")
    for key in ("itm_head.0.weight", "itm_head.3.weight", "vision_proj.weight", "text_proj.weight"):
        if key not in state:
            raise BenchError(f"{source}: '{key}' is missing; APTM's matching head and projections are needed")
    derived = {k for k in state if k.endswith(DERIVED)}
    used, ignored = sort_entries(
        {k: v for k, v in state.items() if k not in derived}, source, USED, TRAINING_ONLY, INDEX_BUFFERS
    )
    notes: list[str] = []
    height, width = _config_int(config, "h", notes), _config_int(config, "w", notes)
    vision = {k[len("vision_encoder.") :]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    swin = infer_swin(vision, height, width, source)
    bert = bert_shape(state, source, cross_in_every_layer=False, fusion_layer=None, heads=heads)
    if bert.encoder_width != swin.out_width:
        raise BenchError(
            f"{source}: the cross-attention reads {bert.encoder_width}-wide image tokens but the Swin gives "
            f"{swin.out_width}"
        )
    max_tokens = _config_int(config, "max_tokens", notes)
    if max_tokens > bert.positions:
        raise BenchError(f"{source}: max_tokens {max_tokens} exceeds the {bert.positions} text positions")
    shape = AptmShape(
        swin, bert, state["vision_proj.weight"].shape[0], _config_int(config, "max_words", notes), max_tokens
    )
    return AptmCheckpoint(shape, used, ignored, notes, _config_int(config, "k_test", notes))
