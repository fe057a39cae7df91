"""IRRA-family models from their released checkpoints: ``load_checkpoint(path, family=...)``.

A checkpoint of IRRA (Jiang and Ye, CVPR 2023) or of a fork that keeps its layout (RDE,
MLLM4Text-ReID + IRRA, ...) is ``{"model": state_dict, ...}`` with OpenAI CLIP keys under
``base_model.``; RDE adds its token-selection layers. The parts IRRA uses in training only (an
identity classifier sized by the training set, MLM head, cross-modal transformer) are ignored by
name; any other module is refused, and a fork with its own parts (PLOT's slots) is named.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tbps_bench.checkpoints import load_state
from tbps_bench.errors import BenchError
from tbps_models.clip_reid.selection import SelectionHead, image_selection, text_selection
from tbps_models.clip_towers.architecture import ClipArchitecture, infer_architecture
from tbps_models.clip_towers.preset import ClipPreset
from tbps_models.clip_towers.towers import (
    load_towers,
    modules_beside,
    new_towers,
    prefixed,
    read_model_state,
    refuse_integer_weights,
)
from tbps_models.layouts import DISPLAY, described, identify

FAMILIES = ("irra", "rde", "auto")
EMBEDDINGS = ("both", "bge", "tse")
CLIP_PREFIX = "base_model."
#: IRRA's evaluation, as data: 384 x 128, bilinear, CLIP's statistics, the raw caption, the stride
#: read off the position table, every block run
IRRA_PRESET = ClipPreset(image_size=(384, 128))
#: modules of IRRA's training (its id, MLM and cross-modal losses), never run in evaluation
TRAINING_ONLY = ("classifier", "mlm_head", "cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post")
#: RDE's token-selection layers: (their prefix in the file, the head they become, the "direct" layer)
RDE_HEADS = {"image_head": ("visul_emb_layer.", "fc."), "text_head": ("texual_emb_layer.", "linear.")}
_HEAD_PARTS = {"mlp.layers.0.": "hidden.", "mlp.bns.0.": "norm.", "mlp.layers.1.": "out."}
#: parts RDE's head module defines and saves but its forward does not apply (the other direct layer,
#: the second BatchNorm)
_HEAD_UNUSED = ("linear.", "fc.", "mlp.bns.1.")


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The file's ``model`` state dict (``module.`` prefixes removed), or one line saying what is wrong."""
    return read_model_state(path, "an IRRA-format .pth file")


def _head_state(state: dict[str, torch.Tensor], prefix: str, direct: str) -> dict[str, torch.Tensor]:
    parts = {direct: "direct.", **_HEAD_PARTS}
    return {
        parts[part] + key[len(prefix + part) :]: value.float()
        for key, value in state.items()
        for part in parts
        if key.startswith(prefix + part)
    }


def check_options(select_ratio: object, embedding: object) -> None:
    """RDE's run options, as far as they can be checked without the checkpoint (how many tokens a
    ratio selects depends on the file's grid and context, checked by the model)."""
    if embedding not in EMBEDDINGS:
        raise BenchError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}")
    number = isinstance(select_ratio, int | float) and not isinstance(select_ratio, bool)
    if not number or not 0.0 < select_ratio <= 1.0:
        raise BenchError(f"select_ratio must be a number in (0, 1]; got {select_ratio!r}")


class ClipReidModel(nn.Module):
    """CLIP towers plus, for RDE, the two token-selection heads; embeddings and the score matrix."""

    def __init__(
        self,
        architecture: ClipArchitecture,
        family: str,
        select_ratio: float = 0.3,
        embedding: str = "both",
        tse_size: int = 1024,
    ):
        super().__init__()
        check_options(select_ratio, embedding)
        if family == "irra" and embedding != "bge":
            raise BenchError("an IRRA model has the global (bge) embedding only; embedding=both|tse needs family rde")
        patches, text_tokens = architecture.grid[0] * architecture.grid[1], architecture.context_length - 2
        if embedding != "bge" and min(int(patches * select_ratio), int(text_tokens * select_ratio)) < 1:
            smallest = 1 / min(patches, text_tokens)
            raise BenchError(
                f"select_ratio {select_ratio} selects no token of {text_tokens} text or {patches} image tokens; "
                f"the smallest that selects one is {smallest:.4g}"
            )
        self.architecture, self.family = architecture, family
        self.select_ratio, self.embedding = float(select_ratio), embedding
        self.backbone = new_towers(architecture, IRRA_PRESET, attention_weights=embedding != "bge")
        if family == "rde":
            self.image_head = SelectionHead(architecture.embed_dim, tse_size)
            self.text_head = SelectionHead(architecture.embed_dim, tse_size)
        self.ignored: dict[str, int] = {}

    # -- preprocessing
    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(n, context) int64: the authors' token ids."""
        return IRRA_PRESET.tokenize(captions, self.architecture.context_length)["ids"]

    # -- features
    def image_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``bge`` (class token) and, when the embedding uses it, ``tse``."""
        selection = self.embedding != "bge"
        out = self.backbone.image_tokens(pixels, attention=selection)
        features = {"bge": out.tokens[:, 0]}
        if selection:
            features["tse"] = image_selection(self.image_head, out.tokens, out.last_attention, self.select_ratio)
        return features

    def text_features(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``bge`` (end token) and, when the embedding uses it, ``tse``."""
        selection = self.embedding != "bge"
        out = self.backbone.text_tokens(ids, attention=selection)
        features = {"bge": out.tokens[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]}
        if selection:
            features["tse"] = text_selection(self.text_head, out.tokens, out.last_attention, ids, self.select_ratio)
        return features

    def combine(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """One unit vector whose dot product is the family's score: the cosine of one embedding, or the
        mean of the BGE and TSE cosines (two unit halves, each scaled by 1/sqrt(2))."""
        unit = nn.functional.normalize
        if self.embedding != "both":
            return unit(features[self.embedding].float(), dim=-1)
        halves = [unit(features[name].float(), dim=-1) / math.sqrt(2.0) for name in ("bge", "tse")]
        return torch.cat(halves, dim=-1)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.combine(self.image_features(pixels))

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        return self.combine(self.text_features(ids))

    @torch.inference_mode()
    def similarity(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Texts x images: the matrix the authors' evaluator ranks (images CLIP-normalised, 384 x 128)."""
        device = next(self.parameters()).device
        texts = self.embed_texts(self.tokenize(captions).to(device))
        return texts @ self.embed_images(images.to(device)).T


def _family(state: dict[str, torch.Tensor], family: str, source: str) -> str:
    if family not in FAMILIES:
        raise BenchError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    other = identify(state)
    if other not in (None, "irra", "rde"):
        raise BenchError(f"{source} is a checkpoint of {DISPLAY[other]}, not IRRA-format: use -m {other}")
    has_selection = all(any(k.startswith(prefix) for k in state) for prefix, _ in RDE_HEADS.values())
    if family == "rde" and not has_selection:
        raise BenchError(
            f"{source} has no RDE token-selection layers (visul_emb_layer.*, texual_emb_layer.*); "
            "it is an IRRA-format checkpoint: use family irra (-m irra)"
        )
    if family == "irra" and has_selection:
        raise BenchError(
            f"{source} is an RDE checkpoint (it has token-selection layers): use family rde (-m rde; "
            "embedding=bge for its global embedding alone)"
        )
    if family == "auto":
        return "rde" if has_selection else "irra"
    return family


def load_checkpoint(
    path: str | Path, family: str = "auto", select_ratio: float = 0.3, embedding: str | None = None
) -> ClipReidModel:
    """An IRRA-family model in eval mode, in fp32, from the authors' checkpoint file.

    ``family``: ``irra``, ``rde`` or ``auto`` (RDE when the file has its token-selection layers).
    ``embedding`` (RDE): ``both`` (default), ``bge`` or ``tse``; ``select_ratio`` (RDE's run argument,
    not stored in the file): 0.3 as in RDE's scripts."""
    source = str(path)
    state = read_state(path)
    clip_state = {k[len(CLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    if not clip_state:
        other = described(state)
        hint = f" (it is {other})" if other else ""
        raise BenchError(f"{source} has no '{CLIP_PREFIX}*' CLIP weights; expected an IRRA-format state dict{hint}")
    family = _family(state, family, source)
    heads = RDE_HEADS if family == "rde" else {}
    used = (CLIP_PREFIX, *(prefix for prefix, _ in heads.values()))
    modules = [prefix.rstrip(".") for prefix in used]
    ignored = modules_beside(state, modules, TRAINING_ONLY, source, family.upper())
    refuse_integer_weights(state, modules, source)
    embedding = embedding or ("both" if family == "rde" else "bge")
    architecture = infer_architecture(clip_state, source, IRRA_PRESET.image_size)
    tse_size = state[f"{RDE_HEADS['image_head'][0]}fc.weight"].shape[0] if heads else 1024
    model = ClipReidModel(architecture, family, select_ratio, embedding, tse_size)
    load_towers(model.backbone, clip_state, architecture, IRRA_PRESET, source, prefixed(CLIP_PREFIX))
    for attribute, (prefix, direct) in heads.items():
        known = tuple(prefix + part for part in (direct, *_HEAD_PARTS, *_HEAD_UNUSED))
        unknown = sorted(k for k in state if k.startswith(prefix) and not k.startswith(known))
        if unknown:
            raise BenchError(
                f"{source}: unknown entries inside {prefix.rstrip('.')}: {unknown[:4]}; refused, not dropped"
            )
        load_state(getattr(model, attribute), _head_state(state, prefix, direct), source, prefix.rstrip("."))
    model.ignored = ignored
    return model.eval()
