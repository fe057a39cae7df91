"""TBPS-CLIP (Cao et al., AAAI 2024) from its released checkpoints, full or simplified.

The file is ``{"model", "optimizer", "config"}``: the image tower under ``visual.`` and the
temperature with OpenAI's names already, the text tower's OpenAI names under ``encode_text.``, and
the run's configuration as a pickled ``easydict.EasyDict``. It is read with weights-only loading
that lets exactly that one class through, rebuilt as an ``OrderedDict`` (nothing is imported or
run). The towers are the same CLIP code path as IRRA's; the method differs in data: 224 x 224
bicubic input with ImageNet statistics, the stride fixed to the patch size, the caption cleaned
before the BPE. The full variant's extra head (``simclr_mlp``) is used in training only.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tbps_bench.checkpoints import load_torch_file
from tbps_bench.errors import BenchError
from tbps_models.clip_towers.architecture import ClipArchitecture, infer_architecture
from tbps_models.clip_towers.backbone import PersonClip
from tbps_models.clip_towers.preset import ClipPreset
from tbps_models.clip_towers.towers import (
    load_towers,
    model_state,
    modules_beside,
    new_towers,
    refuse_integer_weights,
)
from tbps_models.layouts import require
from tbps_models.tbps_clip.captions import TBPS_CLIP_CLEANING

#: TBPS-CLIP's evaluation, as data (the stored config may set another input size)
TBPS_CLIP_PRESET = ClipPreset(
    image_size=(224, 224),
    interpolation="bicubic",
    normalize="imagenet",
    caption_cleaning=TBPS_CLIP_CLEANING,
    stride_is_patch=True,
)
TEXT_PREFIX = "encode_text."
USED = ("visual", "encode_text", "logit_scale")
#: heads of TBPS-CLIP's training losses (self-supervision; id and MLM when a run enables them)
TRAINING_ONLY = ("simclr_mlp", "classifier", "cross_attn", "cross_modal_transformer", "mlm_head")
#: the run config is an ``easydict.EasyDict``; weights-only loading rebuilds it as this
_CONFIG_CLASS = (collections.OrderedDict, "easydict.EasyDict")


def _file_key(name: str) -> str:
    return name if name.startswith("visual.") or name == "logit_scale" else TEXT_PREFIX + name


@dataclass(frozen=True)
class TbpsClipModel:
    towers: PersonClip
    architecture: ClipArchitecture
    variant: str  # "full" | "simplified"


def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``model`` state and the run's config (plain dicts), loaded without executing anything."""
    path = Path(path)
    with torch.serialization.safe_globals([_CONFIG_CLASS]):
        stored = load_torch_file(path, "a TBPS-CLIP checkpoint", "{'model': state_dict, 'config': ...}")
    state = model_state(stored, path, "a TBPS-CLIP checkpoint")
    config = stored.get("config") if isinstance(stored.get("config"), dict) else {}
    return state, config


def _input_size(config: dict[str, Any], source: str) -> tuple[int, int]:
    experiment = config.get("experiment") if isinstance(config.get("experiment"), dict) else {}
    size = experiment.get("input_resolution", TBPS_CLIP_PRESET.image_size)
    if not isinstance(size, list | tuple) or len(size) != 2 or not all(type(v) is int and v > 0 for v in size):
        raise BenchError(f"{source}: config experiment.input_resolution is {size!r}; expected [height, width]")
    return int(size[0]), int(size[1])


def _variant(state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    experiment = config.get("experiment") if isinstance(config.get("experiment"), dict) else {}
    if "ss" in experiment:
        return "full" if experiment["ss"] is True else "simplified"
    return "full" if any(k.startswith("simclr_mlp.") for k in state) else "simplified"


def load_tbps_clip(path: str | Path) -> TbpsClipModel:
    """TBPS-CLIP's towers in eval mode, fp32, from the authors' ``checkpoint_best.pth``."""
    source = str(path)
    state, config = read_file(path)
    require(state, "tbps-clip", source, "TBPS-CLIP towers (visual.*, encode_text.*)")
    modules_beside(state, USED, TRAINING_ONLY, source, "TBPS-CLIP")
    refuse_integer_weights(state, USED, source)
    clip_state = {
        (k[len(TEXT_PREFIX) :] if k.startswith(TEXT_PREFIX) else k): v.float()
        for k, v in state.items()
        if k.split(".")[0] in USED
    }
    image_size = _input_size(config, source)
    architecture = infer_architecture(clip_state, source, image_size, TBPS_CLIP_PRESET.stride_is_patch)
    towers = new_towers(architecture, TBPS_CLIP_PRESET)
    load_towers(towers, clip_state, architecture, TBPS_CLIP_PRESET, source, _file_key)
    return TbpsClipModel(towers.eval(), architecture, _variant(state, config))
