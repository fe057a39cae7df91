"""Released RaSa / MARS ``checkpoint.pth`` files: ``{"model": state_dict, "config": training YAML,
...}``. Sizes come from the tensor shapes; what the shapes cannot tell (``max_words``, head counts,
MARS's ``fusion_layer``) from the stored config, the released configurations' rules, or the user."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

from tbps_bench.errors import BenchError
from tbps_models.albef.stored import bert_shape, read_checkpoint, sort_entries
from tbps_models.albef.text import BertShape
from tbps_models.albef.vision import VitShape, infer_vit
from tbps_models.layouts import DISPLAY, described, identify


class Family(StrEnum):
    #: RaSa (IJCAI 2023): cross-attention from ``fusion_layer`` on; matching from the text-mode states
    RASA = "rasa"
    #: MARS (arXiv 2407.04287): cross-attention in every layer; matching from the input ids through all
    MARS = "mars"


#: ``max_words`` of the released dataset configs, for a file without a stored config
DEFAULT_MAX_WORDS = {Family.RASA: 50, Family.MARS: 75}
#: used at inference; everything else must be a known training-only part
USED = ("visual_encoder.", "vision_proj.", "text_encoder.bert.", "text_proj.", "itm_head.")
#: training-only entries, ignored by name: momentum copies and queues, the PRD / MRTD / MLM heads,
#: the contrastive temperature, and MARS's MAE decoder
TRAINING_ONLY = (
    "visual_encoder_m.",
    "vision_proj_m.",
    "text_encoder_m.",
    "text_proj_m.",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
    "temp",
    "prd_head.",
    "mrtd_head.",
    "text_encoder.cls.",
    "visual_decoder.",
    "decoder_pred.",
    "visual_decoder_pos_embed",
    "mask_token",
)


@dataclass(frozen=True)
class AlbefShape:
    family: Family
    vit: VitShape
    bert: BertShape
    embed_dim: int
    max_words: int


@dataclass
class AlbefCheckpoint:
    shape: AlbefShape
    state: dict[str, torch.Tensor]  # the used entries
    ignored: dict[str, int]  # training-only prefix -> tensors
    notes: list[str]
    k_test: int | None


def load_albef(
    path: str | Path,
    family: Family,
    max_words: int | None = None,
    fusion_layer: int | None = None,
    heads: int | None = None,
    vision_heads: int | None = None,
) -> AlbefCheckpoint:
    source = str(path)
    state, config = read_checkpoint(path, "a RaSa/MARS checkpoint.pth")
    if identify(state) != family.value:
        what = described(state) or "not a RaSa/MARS checkpoint"
        raise BenchError(f"{source} is {what} (-m {family.value} reads {DISPLAY[family.value]} files)")
    for head in ("itm_head.weight", "itm_head.bias"):
        if head not in state:
            raise BenchError(f"{source}: '{head}' is missing: the image-text matching head that re-ranks the shortlist")
    for proj in ("vision_proj.weight", "text_proj.weight"):
        if proj not in state:
            raise BenchError(f"{source}: '{proj}' is missing: the contrastive projection that builds the shortlist")
    used, ignored = sort_entries(state, source, USED, TRAINING_ONLY, ("position_ids", "idx_queue", "queue_ptr"))
    vit_state = {k[len("visual_encoder.") :]: v for k, v in state.items() if k.startswith("visual_encoder.")}
    vit = infer_vit(vit_state, source, vision_heads)
    notes = []
    image_res = config.get("image_res")
    if image_res is not None and int(image_res) != vit.image_size:
        raise BenchError(
            f"{source}: its config says image_res {image_res}, but its position table is for {vit.image_size} x "
            f"{vit.image_size} ({vit.grid} x {vit.grid} patches of {vit.patch})"
        )
    if max_words is None:
        max_words = config.get("max_words")
        if max_words is None:
            max_words = DEFAULT_MAX_WORDS[family]
            notes.append(f"no stored config: max_words={max_words} ({family.value}'s released configs)")
    max_words = int(max_words)
    bert = bert_shape(state, source, family is Family.MARS, fusion_layer, heads)
    if not 2 <= max_words <= bert.positions:
        raise BenchError(f"max_words must be in [2, {bert.positions}] (the position table); got {max_words}")
    shape = AlbefShape(family, vit, bert, state["vision_proj.weight"].shape[0], max_words)
    k_test = config.get("k_test")
    return AlbefCheckpoint(shape, used, ignored, notes, int(k_test) if isinstance(k_test, int) else None)
