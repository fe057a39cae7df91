"""Checkpoints: the authors' release format (read only) and our own (safetensors + JSON config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tbps_bench.checkpoints import load_state, read_json, read_tensors
from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir
from tbps_models.nafs.config import NafsConfig
from tbps_models.nafs.model import Nafs

OWN_WEIGHTS = "model.safetensors"
OWN_CONFIG = "config.json"
OWN_TEXT_ENCODER = "text_encoder"


def _read_official(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"NAFS checkpoint {path} does not exist; expected a torch.save file with a 'network' dict")
    try:
        # weights_only: a checkpoint from elsewhere must never run pickled code
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(
            f"cannot read NAFS checkpoint {path} (truncated, corrupt or not a torch file): {first_line}"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("network"), dict):
        raise BenchError(f"NAFS checkpoint {path} has no 'network' state dict; expected the release format")
    return payload


def load_official_checkpoint(model: torch.nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load ``{'network': {'module.<key>': ...}, 'W': ...}`` into ``model``; returns the problems found.

    Shape mismatches are always an error (another trunk, stripe count or feature size); missing or
    unexpected keys are an error when ``strict``."""
    path = Path(path)
    payload = _read_official(path)
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in payload["network"].items()}
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise BenchError(
            f"NAFS checkpoint {path} is of another architecture: {len(mismatched)} shape mismatches, first "
            f"{mismatched[0]} (check trunk, part2/part3, text encoder and max_length)"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = [f"missing key {k}" for k in missing] + [f"unexpected key {k}" for k in unexpected]
    if problems and strict:
        raise BenchError(
            f"NAFS checkpoint {path} does not match the model: {len(missing)} missing keys (first: "
            f"{missing[:2]}), {len(unexpected)} unexpected keys (first: {unexpected[:2]})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    weight_matrix = payload.get("W")
    if weight_matrix is not None and not isinstance(weight_matrix, torch.Tensor):
        raise BenchError(f"NAFS checkpoint {path}: 'W' is a {type(weight_matrix).__name__}, expected a tensor")
    model.loss_weight_matrix = weight_matrix
    return problems


def save_own_checkpoint(
    folder: str | Path, network: torch.nn.Module, config: dict[str, Any], extra: dict[str, torch.Tensor], meta: dict
) -> Path:
    """Weights (network + ``extra`` tensors such as the CMPC matrix) as safetensors, config and
    metadata as JSON, and the text encoder's config and vocab, so the folder is self-contained."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tensors = {f"network.{k}": v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
        tensors.update({f"extra.{k}": v.detach().contiguous().cpu() for k, v in extra.items()})
        save_file(tensors, str(tmp / OWN_WEIGHTS))
        encoder = Path(config["text_encoder"])
        (tmp / OWN_TEXT_ENCODER).mkdir()
        for name in ("config.json", "vocab.txt"):
            shutil.copyfile(encoder / name, tmp / OWN_TEXT_ENCODER / name)
        stored = {**config, "text_encoder": OWN_TEXT_ENCODER, "trunk_weights": None}
        (tmp / OWN_CONFIG).write_text(json.dumps({"config": stored, "meta": meta}, indent=1, sort_keys=True))
    return folder


def read_own_checkpoint(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(config with an absolute text-encoder path, metadata, tensors) of a folder written above."""
    folder = Path(folder)
    stored = read_json(folder / OWN_CONFIG, "NAFS")
    if not isinstance(stored.get("config"), dict) or "text_encoder" not in stored["config"]:
        raise BenchError(
            f"{folder / OWN_CONFIG}: no 'config' with a text_encoder; this is not a NAFS checkpoint "
            "(another method's folder?)"
        )
    tensors = read_tensors(folder / OWN_WEIGHTS, "NAFS")
    config = dict(stored["config"])
    config["text_encoder"] = str(folder / config["text_encoder"])
    config["text_encoder_pretrained"] = False
    return config, stored.get("meta", {}), tensors


def load_own_checkpoint(folder: str | Path):
    """A NAFS model (eval mode) and the checkpoint's metadata and extra tensors."""
    config, meta, tensors = read_own_checkpoint(folder)
    model = Nafs(NafsConfig.from_dict(config, str(folder)))
    network = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
    load_state(model, network, str(Path(folder) / OWN_WEIGHTS), "NAFS")
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return model.eval(), meta, extra


def build_from_official(
    checkpoint: str | Path, text_encoder: str | Path, config: NafsConfig | None = None, strict: bool = True
) -> Nafs:
    """NAFS from a checkpoint in the authors' release format plus a BERT folder (config + vocab).

    The BERT weights come from the checkpoint, so the folder needs no weights. Returns the model in
    eval mode; ``model.loss_weight_matrix`` holds the checkpoint's ``W`` when it has one."""
    base = config.to_dict() if config is not None else {}
    base.update(text_encoder=str(text_encoder), text_encoder_pretrained=False)
    model = Nafs(NafsConfig.from_dict(base))
    load_official_checkpoint(model, checkpoint, strict=strict)
    return model.eval()
