"""Released RaSa / MARS ``checkpoint.pth`` files: ``{"model": state_dict, "config": training YAML,
...}``. Sizes come from the tensor shapes; what the shapes cannot tell (``max_words``, head counts,
MARS's ``fusion_layer``) from the stored config, the released configurations' rules, or the user."""

from __future__ import annotations

import pickle
import zipfile
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_models.albef.text import BertShape
from tbps_models.albef.vision import HEAD_WIDTH, VitShape, infer_vit
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
#: position ids are a buffer (0..511) that transformers builds itself
BUFFERS = ("text_encoder.bert.embeddings.position_ids",)


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


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``model`` state dict (``module.`` removed) and the stored config, or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist (expected a RaSa/MARS checkpoint.pth)")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BenchError(
            f"checkpoint {path} holds pickled Python objects, which weights-only loading refuses; expected "
            "{'model': state_dict, 'config': ...} of tensors and plain values"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise BenchError(f"checkpoint {path} cannot be read (truncated or not a torch file): {exc}") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        found = sorted(map(str, stored))[:6] if isinstance(stored, dict) else type(stored).__name__
        raise BenchError(f"checkpoint {path} is not a RaSa/MARS file: expected a dict with 'model', found {found}")
    state = {str(k).removeprefix("module."): v for k, v in stored["model"].items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BenchError(f"checkpoint {path}: 'model' entry {bad[0]} is not a tensor")
    config = stored.get("config")
    return state, config if isinstance(config, dict) else {}


def _bert_shape(state, source, family: Family, fusion_layer: int | None, heads: int | None) -> BertShape:
    prefix = "text_encoder.bert."
    required = [f"{prefix}embeddings.word_embeddings.weight", f"{prefix}embeddings.position_embeddings.weight"]
    for key in required:
        if key not in state:
            raise BenchError(f"{source}: '{key}' is missing; expected ALBEF's text_encoder.bert.*")
    vocab, hidden = state[required[0]].shape
    layer_ids = {int(k[len(prefix) :].split(".")[2]) for k in state if k.startswith(prefix + "encoder.layer.")}
    if not layer_ids:
        raise BenchError(f"{source}: no text_encoder.bert.encoder.layer.* weights")
    layers = max(layer_ids) + 1
    cross = tuple(
        sorted({i for i in layer_ids if f"{prefix}encoder.layer.{i}.crossattention.self.key.weight" in state})
    )
    if not cross:
        raise BenchError(f"{source}: no text layer has cross-attention weights; it is not an ALBEF cross-encoder")
    if family is Family.RASA:
        found = cross[0]
        if fusion_layer is not None and fusion_layer != found:
            raise BenchError(f"{source}: fusion_layer={fusion_layer}, but cross-attention starts at layer {found}")
        fusion = found
        if cross != tuple(range(found, layers)):
            raise BenchError(
                f"{source}: cross-attention in layers {list(cross)}; RaSa has it in every layer from one on"
            )
    else:
        if cross != tuple(range(layers)):
            raise BenchError(f"{source}: cross-attention in layers {list(cross)}; MARS has it in every layer")
        fusion = layers // 2 if fusion_layer is None else fusion_layer  # config_bert-fullca.json: 6 of 12
    if not 0 <= fusion < layers:
        raise BenchError(f"fusion_layer must be in [0, {layers}); got {fusion}")
    heads = heads or max(1, hidden // HEAD_WIDTH)
    if heads < 1 or hidden % heads:
        raise BenchError(f"heads={heads} does not divide the text width {hidden}")
    key_weight = state[f"{prefix}encoder.layer.{cross[0]}.crossattention.self.key.weight"]
    intermediate = state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]
    positions = state[required[1]].shape[0]
    return BertShape(hidden, layers, heads, intermediate, vocab, positions, fusion, cross, key_weight.shape[1])


def load_albef(
    path: str | Path,
    family: Family,
    max_words: int | None = None,
    fusion_layer: int | None = None,
    heads: int | None = None,
    vision_heads: int | None = None,
) -> AlbefCheckpoint:
    source = str(path)
    state, config = read_checkpoint(path)
    if identify(state) != family.value:
        what = described(state) or "not a RaSa/MARS checkpoint"
        raise BenchError(f"{source} is {what} (-m {family.value} reads {DISPLAY[family.value]} files)")
    for head in ("itm_head.weight", "itm_head.bias"):
        if head not in state:
            raise BenchError(f"{source}: '{head}' is missing: the image-text matching head that re-ranks the shortlist")
    for proj in ("vision_proj.weight", "text_proj.weight"):
        if proj not in state:
            raise BenchError(f"{source}: '{proj}' is missing: the contrastive projection that builds the shortlist")
    for key, value in state.items():
        if not value.is_floating_point() and not key.endswith(("position_ids", "idx_queue", "queue_ptr")):
            raise BenchError(f"{source}: '{key}' is {value.dtype}; expected floating-point weights")
    unknown = sorted(k for k in state if not k.startswith(USED + TRAINING_ONLY) and k not in BUFFERS)
    if unknown:
        raise BenchError(f"{source}: unknown entries {unknown[:3]} ({len(unknown)} in all); refusing to drop them")
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
    bert = _bert_shape(state, source, family, fusion_layer, heads)
    if not 2 <= max_words <= bert.positions:
        raise BenchError(f"max_words must be in [2, {bert.positions}] (the position table); got {max_words}")
    shape = AlbefShape(family, vit, bert, state["vision_proj.weight"].shape[0], max_words)
    used = {k: v for k, v in state.items() if k.startswith(USED) and k not in BUFFERS}
    ignored = Counter(
        next(p for p in TRAINING_ONLY if k.startswith(p)).rstrip(".") for k in state if k.startswith(TRAINING_ONLY)
    )
    k_test = config.get("k_test")
    return AlbefCheckpoint(shape, used, dict(ignored), notes, int(k_test) if isinstance(k_test, int) else None)
