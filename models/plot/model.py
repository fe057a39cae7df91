"""PLOT (Park et al., ECCV 2024) from its released checkpoint: ``load_plot(path, iterations=5)``.

IRRA's CLIP towers (same key names under ``base_model.``, fp32) with the text tower built without
its last block, plus part slots over the projected tokens: the image's patch tokens, and the
caption's tokens other than the start and end tokens (padding masked). The test-time score of a
(text, image) pair is the global cosine plus the slot-classifier-weighted sum of the per-slot
cosines: ``w[t] = 3 softmax(classifier(g_t))`` from the raw global text feature ``g_t``. That is the
dot product of a text vector ``[ĝ_t, w_t1 û_t1, ..., w_tS û_tS]`` and an image vector
``[ĝ_i, û_i1, ..., û_iS]`` (hats: unit length), which is how tbps-bench scores it: a matrix product.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tbps_bench.arguments import at_least
from tbps_bench.checkpoints import load_state
from tbps_bench.errors import BenchError
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
from tbps_models.layouts import require
from tbps_models.plot.slots import SlotAttention

CLIP_PREFIX = "base_model."
#: PLOT's evaluation, as data: IRRA's inputs; the last text block is stored but never run
PLOT_PRESET = ClipPreset(image_size=(384, 128), text_blocks_dropped=1)
#: the slot parts are this wide whatever the CLIP size (the authors' code fixes it)
SLOT_WIDTH = 512
#: the slot weights are a softmax times this (the authors' code fixes it)
SLOT_WEIGHT_SCALE = 3.0
#: slot-attention iterations of the authors' scripts (``--num_iters``; not stored in the file)
ITERATIONS = 5
USED = ("base_model", "slots", "slot_attention", "slot_attention_t", "text_slot_classifier")
#: modules of PLOT's training losses (id, local id, MLM, cross-modal, reconstruction), never run in evaluation
TRAINING_ONLY = (
    "classifier",
    "local_classifier",
    "cross_attn",
    "cross_modal_transformer",
    "ln_pre_t",
    "ln_pre_i",
    "ln_post",
    "mlm_head",
    "recon_decoder",
    "recon_decoder_t",
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| without an epsilon, as PLOT's evaluator divides the slots."""
    return x / x.norm(dim=-1, keepdim=True)


class PlotModel(nn.Module):
    def __init__(self, architecture: ClipArchitecture, num_slots: int, classifier_hidden: int, iterations: int):
        super().__init__()
        if architecture.embed_dim != SLOT_WIDTH:
            raise BenchError(
                f"PLOT's slots are {SLOT_WIDTH} wide, so its CLIP embedding must be too; this one is "
                f"{architecture.embed_dim}"
            )
        self.architecture = architecture
        self.backbone = new_towers(architecture, PLOT_PRESET)
        self.slots = nn.Parameter(torch.zeros(num_slots, SLOT_WIDTH))
        self.slot_attention = SlotAttention(SLOT_WIDTH, iterations)
        self.slot_attention_t = SlotAttention(SLOT_WIDTH, iterations)
        self.text_slot_classifier = nn.Sequential(
            nn.Linear(SLOT_WIDTH, classifier_hidden), nn.ReLU(), nn.Linear(classifier_hidden, num_slots)
        )

    # -- features
    def image_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``global`` (projected class token) and ``slots`` (over the projected patch tokens)."""
        tokens = self.backbone.image_tokens(pixels).tokens
        return {"global": tokens[:, 0], "slots": self.slot_attention(self.slots, tokens[:, 1:])}

    def text_features(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``global`` (projected end token, raw), ``slots`` (over every other token but the start token,
        padding masked) and ``slot_logits`` (the classifier on the raw global feature)."""
        tokens = self.backbone.text_tokens(ids).tokens
        rows = torch.arange(len(ids), device=ids.device)
        end = ids.argmax(dim=-1)
        # positions 1 .. context - 1 without the end token: (B, context - 2)
        base = torch.arange(1, ids.shape[1] - 1, device=ids.device)[None, :]
        positions = base + (base >= end[:, None]).long()
        inputs = tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))
        padding = ids.gather(1, positions) == 0
        text_global = tokens[rows, end]
        return {
            "global": text_global,
            "slots": self.slot_attention_t(self.slots, inputs, padding),
            "slot_logits": self.text_slot_classifier(text_global),
        }

    # -- the score as a dot product
    @staticmethod
    def slot_weights(logits: torch.Tensor) -> torch.Tensor:
        return SLOT_WEIGHT_SCALE * logits.softmax(dim=-1)

    @staticmethod
    def image_vector(features: dict[str, torch.Tensor]) -> torch.Tensor:
        unit_global = nn.functional.normalize(features["global"].float(), dim=-1)
        return torch.cat([unit_global, _unit(features["slots"].float()).flatten(1)], dim=1)

    @staticmethod
    def text_vector(features: dict[str, torch.Tensor]) -> torch.Tensor:
        unit_global = nn.functional.normalize(features["global"].float(), dim=-1)
        weighted = _unit(features["slots"].float()) * PlotModel.slot_weights(features["slot_logits"].float())[..., None]
        return torch.cat([unit_global, weighted.flatten(1)], dim=1)

    @torch.inference_mode()
    def similarity(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Texts x images: the matrix PLOT's evaluator ranks."""
        return self.text_vector(self.text_features(ids)) @ self.image_vector(self.image_features(pixels)).T


def load_plot(path: str | Path, iterations: int = ITERATIONS) -> PlotModel:
    """A PLOT model in eval mode, fp32, from the authors' checkpoint (``best.pth``)."""
    source = str(path)
    state = read_model_state(path, "a PLOT .pth file")
    require(state, "plot", source, "PLOT slot modules (slots, slot_attention.*)")
    modules_beside(state, USED, TRAINING_ONLY, source, "PLOT")
    refuse_integer_weights(state, USED, source)
    at_least("iterations", iterations, 1)
    clip_state = {k[len(CLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    architecture = infer_architecture(clip_state, source, PLOT_PRESET.image_size)
    if architecture.text_layers <= PLOT_PRESET.text_blocks_dropped:
        raise BenchError(
            f"{source}: the text tower has {architecture.text_layers} block(s); PLOT runs all but the last"
        )
    try:
        slots = state["slots"]
        hidden = state["text_slot_classifier.0.weight"].shape[0]
    except KeyError as exc:
        raise BenchError(f"{source}: PLOT weight {exc.args[0]!r} missing; the file is incomplete") from exc
    if slots.dim() != 2:
        raise BenchError(f"{source}: 'slots' is {tuple(slots.shape)}; expected (slots x {SLOT_WIDTH})")
    model = PlotModel(architecture, slots.shape[0], hidden, iterations)
    load_towers(model.backbone, clip_state, architecture, PLOT_PRESET, source, prefixed(CLIP_PREFIX))
    parts = {k: v.float() for k, v in state.items() if k.split(".")[0] in USED[1:]}
    load_state(_SlotParts(model), parts, source, "PLOT slot")
    return model.eval()


class _SlotParts(nn.Module):
    """The model without its towers, so that a load names every slot entry that does not fit."""

    def __init__(self, model: PlotModel):
        super().__init__()
        self.slots = model.slots
        self.slot_attention = model.slot_attention
        self.slot_attention_t = model.slot_attention_t
        self.text_slot_classifier = model.text_slot_classifier
