"""Reading an ALBEF-family ``checkpoint.pth`` (``{"model": state_dict, "config": ...}``) without
executing anything, and checking its entries by name: what is used, what is known to be used in
training only (ignored and counted), and anything else (refused, by name)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from tbps_bench.checkpoints import load_torch_file
from tbps_bench.errors import BenchError
from tbps_models.albef.text import BertShape
from tbps_models.albef.vision import HEAD_WIDTH

BERT = "text_encoder.bert."


def read_checkpoint(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``model`` state dict (``module.`` removed) and the stored config, or one line saying why not."""
    path = Path(path)
    stored = load_torch_file(path, what, "{'model': state_dict, 'config': ...} of tensors and plain values")
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        found = sorted(map(str, stored))[:6] if isinstance(stored, dict) else type(stored).__name__
        raise BenchError(f"checkpoint {path} is not {what}: expected a dict with 'model', found {found}")
    state = {str(k).removeprefix("module."): v for k, v in stored["model"].items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BenchError(f"checkpoint {path}: 'model' entry {bad[0]} is not a tensor")
    config = stored.get("config")
    return state, config if isinstance(config, dict) else {}


def sort_entries(
    state: dict[str, torch.Tensor],
    source: str,
    used: tuple[str, ...],
    training_only: tuple[str, ...],
    index_buffers: tuple[str, ...],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The used entries, and the training-only ones counted by prefix. Integer or complex weights,
    and entries that are neither (adapters, prompts, LoRA weights: they change the function), stop
    with their names. ``index_buffers``: integer buffers the model builds itself (key endings)."""
    for key, value in state.items():
        if not value.is_floating_point() and not key.endswith(index_buffers):
            raise BenchError(f"{source}: '{key}' is {value.dtype}; expected floating-point weights")
    unknown = sorted(k for k in state if not k.startswith(used + training_only))
    if unknown:
        raise BenchError(f"{source}: unknown entries {unknown[:3]} ({len(unknown)} in all); refusing to drop them")
    kept = {k: v for k, v in state.items() if k.startswith(used) and not k.endswith(index_buffers)}
    ignored = Counter(
        next(p for p in training_only if k.startswith(p)).rstrip(".") for k in state if k.startswith(training_only)
    )
    return kept, dict(ignored)


def bert_shape(
    state: dict[str, torch.Tensor], source: str, cross_in_every_layer: bool, fusion_layer: int | None, heads: int | None
) -> BertShape:
    """The text encoder's sizes from the shapes. ``fusion_layer`` (the text-only layers) is the first
    layer with cross-attention, unless every layer has it (MARS): then half the layers, as its
    released config, or the user's value."""
    required = [f"{BERT}embeddings.word_embeddings.weight", f"{BERT}embeddings.position_embeddings.weight"]
    for key in required:
        if key not in state:
            raise BenchError(f"{source}: '{key}' is missing; expected the text encoder text_encoder.bert.*")
    vocab, hidden = state[required[0]].shape
    layer_ids = {int(k[len(BERT) :].split(".")[2]) for k in state if k.startswith(BERT + "encoder.layer.")}
    if not layer_ids:
        raise BenchError(f"{source}: no text_encoder.bert.encoder.layer.* weights")
    layers = max(layer_ids) + 1
    cross = tuple(sorted(i for i in layer_ids if f"{BERT}encoder.layer.{i}.crossattention.self.key.weight" in state))
    if not cross:
        raise BenchError(f"{source}: no text layer has cross-attention weights; it is not an ALBEF cross-encoder")
    if cross_in_every_layer:
        if cross != tuple(range(layers)):
            raise BenchError(f"{source}: cross-attention in layers {list(cross)}; expected it in every layer")
        fusion = layers // 2 if fusion_layer is None else fusion_layer
    else:
        if cross != tuple(range(cross[0], layers)):
            raise BenchError(f"{source}: cross-attention in layers {list(cross)}; expected every layer from one on")
        if fusion_layer is not None and fusion_layer != cross[0]:
            raise BenchError(f"{source}: fusion_layer={fusion_layer}, but cross-attention starts at layer {cross[0]}")
        fusion = cross[0]
    if not 0 <= fusion < layers:
        raise BenchError(f"fusion_layer must be in [0, {layers}); got {fusion}")
    heads = heads or max(1, hidden // HEAD_WIDTH)
    if heads < 1 or hidden % heads:
        raise BenchError(f"heads={heads} does not divide the text width {hidden}")
    key_weight = state[f"{BERT}encoder.layer.{cross[0]}.crossattention.self.key.weight"]
    intermediate = state[f"{BERT}encoder.layer.0.intermediate.dense.weight"].shape[0]
    positions = state[required[1]].shape[0]
    return BertShape(hidden, layers, heads, intermediate, vocab, positions, fusion, cross, key_weight.shape[1])
