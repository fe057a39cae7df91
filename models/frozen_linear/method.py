"""Frozen MiniLM (text) and EfficientNet-Lite0 (image) features, linear projections trained by CMPM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tbps_bench.arguments import at_least
from tbps_bench.checkpoints import load_state, read_json, read_tensors
from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir, write_json_atomic
from tbps_bench.methods import Features, FrozenBackbone, Method, Trainable, global_batch
from tbps_models.frozen_linear.efficientnet_lite import EfficientNetLite0
from tbps_models.length_pieces import CPU_TOKENS_PER_PIECE, in_length_pieces
from tbps_models.losses import cmpm_loss
from tbps_models.nafs.presets import offline_text_encoder
from tbps_models.transforms import person_image_transform

IMAGE_SIZE = (256, 128)
MAX_TOKENS = 64
#: on CPU the image backbone runs on pieces of a batch whose activations stay in cache: the same
#: bits, faster than whole batches (docs/benchmarks.md)
CPU_IMAGES_PER_PIECE = 8
SCHEDULE = {
    "epochs": 15,
    "batch_size": 64,
    "lr": 1e-3,
    "backbone_lr_factor": 0.0,
    "backbone_weight_decay": 0.0,
    "warmup_epochs": 0,
    "warmup_factor": 1.0,
    "milestones": [10],
    "gamma": 0.1,
}


class FrozenLinearMethod(FrozenBackbone, Trainable, Method):
    """Options: ``dim`` (joint size, 256), ``text_encoder`` (a BERT-family folder; the packaged MiniLM
    by default), ``image_weights`` (EfficientNet-Lite0 state dict; the packaged one by default)."""

    name = "frozen-linear"
    smoke_arguments = ("dim=32",)

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        at_least("dim", arguments.get("dim", 256), 1)

    def __init__(self, dim: int = 256, text_encoder: str | None = None, image_weights: str | None = None, **kwargs):
        super().__init__(**kwargs)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.dim = int(dim)
        folder = text_encoder or offline_text_encoder()
        if not (Path(folder) / "config.json").is_file():
            raise BenchError(f"text encoder folder {folder} has no config.json")
        self.text_folder = Path(folder)
        self.text_name = self.text_folder.name if text_encoder else "all-MiniLM-L6-v2"
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # tokenize() sees whole captions, counts and cuts them itself: no "indexing errors" warning
        self.tokenizer.model_max_length = sys.maxsize
        self.image_weights = str(Path(image_weights).resolve()) if image_weights else "packaged"
        text_encoder_model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.network.backbone = nn.ModuleDict(
            {"image": EfficientNetLite0.pretrained(image_weights).frozen(), "text": text_encoder_model}
        )
        self.network.heads = nn.ModuleDict(
            {
                "image_projection": nn.Linear(1280, self.dim),
                "text_projection": nn.Linear(text_encoder_model.config.hidden_size, self.dim),
            }
        )
        if self.checkpoint is not None:
            self._load(Path(self.checkpoint))

    def arguments(self) -> dict[str, Any]:
        return {"dim": self.dim, "text_encoder": self.text_name}

    def encoder_arguments(self) -> dict[str, Any]:
        return {"text_encoder": str(self.text_folder.resolve()), "image_weights": self.image_weights}

    def preprocessing(self) -> dict[str, Any]:
        return {
            "image_size": list(IMAGE_SIZE),
            "normalize": "imagenet",
            "tokenizer": self.text_name,
            "max_tokens": MAX_TOKENS,
        }

    def image_transform(self):
        return person_image_transform(IMAGE_SIZE)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        full = self.tokenizer(captions, padding=True, truncation=False, return_tensors="pt")
        truncated = full["attention_mask"].sum(1) > MAX_TOKENS
        return {
            "input_ids": full["input_ids"][:, :MAX_TOKENS],
            "attention_mask": full["attention_mask"][:, :MAX_TOKENS],
            "truncated": truncated,
        }

    # -- frozen backbone features, then the trained projections
    def encode_images(self, batch) -> torch.Tensor:
        pixels = batch["pixels"]
        pieces = pixels.split(CPU_IMAGES_PER_PIECE) if pixels.device.type == "cpu" else [pixels]
        return torch.cat([self.network.backbone["image"](piece) for piece in pieces])

    def encode_texts(self, batch) -> torch.Tensor:
        """On CPU, captions sorted by length in pieces of about CPU_TOKENS_PER_PIECE tokens, each cut
        to its longest caption (toy-pedes' train split: 26.8 tokens a caption instead of the 36.7 of
        padding to each batch's longest); mean pooling reads no padding, so only rounding changes."""
        ids, mask = batch["tokens"]["input_ids"], batch["tokens"]["attention_mask"]
        if ids.device.type != "cpu" or len(ids) == 0:
            return self._mean_pooled(ids, mask)
        return in_length_pieces(self._mean_pooled, ids, mask, CPU_TOKENS_PER_PIECE)

    def _mean_pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.network.backbone["text"](input_ids=ids, attention_mask=mask).last_hidden_state
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)

    def project_images(self, features: Features) -> torch.Tensor:
        return self.network.heads["image_projection"](features["embedding"])

    def project_texts(self, features: Features) -> torch.Tensor:
        return self.network.heads["text_projection"](features["embedding"])

    # -- training: the loop supplies the cached backbone features; projections by CMPM
    def default_training_config(self) -> dict[str, Any]:
        return dict(SCHEDULE)

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"params": list(self.network.heads.parameters()), "lr": config["lr"], "weight_decay": 0.0}]

    def train(self, mode: bool = True) -> FrozenLinearMethod:
        self.network.heads.train(mode)
        self.network.backbone.eval()
        return self

    def trained_modules(self) -> nn.Module:
        return self.network.heads

    def training_losses(self, batch) -> dict[str, torch.Tensor]:
        images = self.project_images(batch["image_features"])
        texts = self.project_texts(batch["text_features"])
        images, texts, labels = global_batch(batch, (images, texts, batch["labels"]))
        loss = cmpm_loss(images, texts, labels)
        return {"cmpm": loss, "total": loss}

    def save_checkpoint(self, folder, record: dict[str, Any]) -> None:
        with atomic_dir(folder) as tmp:
            state = self.network.heads.state_dict()
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "projections.safetensors")
            )
            write_json_atomic(tmp / "config.json", {"config": {"dim": self.dim}, "meta": record})

    def _load(self, folder: Path) -> None:
        weights = folder / "projections.safetensors"
        tensors = read_tensors(weights, self.name)
        stored = read_json(folder / "config.json", self.name)
        dim = (stored.get("config") or {}).get("dim")
        if dim is None:
            raise BenchError(f"{folder / 'config.json'}: no config.dim; this is not a frozen-linear checkpoint")
        if dim != self.dim:
            raise BenchError(f"checkpoint {folder} has dim {dim}; the method was built with dim {self.dim} (dim={dim})")
        load_state(self.network.heads, tensors, str(weights), self.name)
        self.training_record = stored.get("meta") or None
