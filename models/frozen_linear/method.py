"""Frozen MiniLM (text) and EfficientNet-Lite0 (image) features, linear projections trained by CMPM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tbps_bench.encoding import FeatureCache
from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir, write_json_atomic
from tbps_bench.harness import EvalOptions, encode_split
from tbps_bench.methods import Method
from tbps_bench.splits import EvalSplit
from tbps_models.frozen_linear.efficientnet_lite import EfficientNetLite0
from tbps_models.losses import cmpm_loss
from tbps_models.nafs.presets import offline_text_encoder
from tbps_models.transforms import person_image_transform

IMAGE_SIZE = (256, 128)
MAX_TOKENS = 64
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


class FrozenLinearMethod(Method):
    """Options: ``dim`` (joint size, 256), ``text_encoder`` (a BERT-family folder; the packaged MiniLM
    by default), ``image_weights`` (EfficientNet-Lite0 state dict; the packaged one by default)."""

    name = "frozen-linear"
    trainable = True
    needs_pixels_in_training = False
    frozen_backbone = True

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
        self.text_encoder = AutoModel.from_pretrained(folder, local_files_only=True)
        self.image_weights = str(Path(image_weights).resolve()) if image_weights else "packaged"
        self.image_encoder = EfficientNetLite0.pretrained(image_weights)
        self.image_projection = nn.Linear(1280, self.dim)
        self.text_projection = nn.Linear(self.text_encoder.config.hidden_size, self.dim)
        self._train_features: dict[str, torch.Tensor] = {}
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

    # -- frozen features, then the trained projections
    def _image_backbone(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixels)

    def _text_backbone(self, tokens) -> torch.Tensor:
        mask = tokens["attention_mask"]
        hidden = self.text_encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # mean pooling

    def encode_images(self, batch):
        return self._image_backbone(batch["pixels"])

    def encode_texts(self, batch):
        return self._text_backbone(batch["tokens"])

    def project_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_projection(features)

    def project_texts(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_projection(features)

    # -- training: backbone features once (through the feature cache), projections by CMPM
    def default_training_config(self) -> dict[str, Any]:
        return dict(SCHEDULE)

    def prepare_training(self, num_classes: int, config: dict[str, Any], train_split: EvalSplit) -> None:
        images, texts, _ = encode_split(self, train_split, EvalOptions(batch_size=64), FeatureCache(), project=False)
        self._train_features = {"image": images, "text": texts}

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        params = [*self.image_projection.parameters(), *self.text_projection.parameters()]
        return [{"params": params, "lr": config["lr"], "weight_decay": 0.0}]

    def train(self, mode: bool = True) -> FrozenLinearMethod:
        super().train(mode)
        self.image_encoder.eval()
        self.text_encoder.eval()
        return self

    def training_losses(self, batch) -> dict[str, torch.Tensor]:
        images = self._train_features["image"][batch["image_index"]].to(self.device)
        texts = self._train_features["text"][batch["caption_index"]].to(self.device)  # backbone features
        loss = cmpm_loss(self.image_projection(images), self.text_projection(texts), batch["labels"])
        return {"cmpm": loss, "total": loss}

    def _projections(self) -> dict[str, torch.Tensor]:
        state = {f"image_projection.{k}": v for k, v in self.image_projection.state_dict().items()}
        return {**state, **{f"text_projection.{k}": v for k, v in self.text_projection.state_dict().items()}}

    def training_state(self) -> dict[str, torch.Tensor]:
        return self._projections()

    def load_training_state(self, state) -> None:
        self.image_projection.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("image_")}
        )
        self.text_projection.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("text_")})

    def save_checkpoint(self, folder, record: dict[str, Any]) -> None:
        with atomic_dir(folder) as tmp:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self._projections().items()},
                str(tmp / "projections.safetensors"),
            )
            write_json_atomic(tmp / "config.json", {"config": {"dim": self.dim}, "meta": record})

    def _load(self, folder: Path) -> None:
        weights = folder / "projections.safetensors"
        if not weights.is_file():
            raise BenchError(f"{folder} is not a frozen-linear checkpoint: expected projections.safetensors in it")
        stored = json.loads((folder / "config.json").read_text())
        if stored["config"]["dim"] != self.dim:
            raise BenchError(
                f"checkpoint {folder} has dim {stored['config']['dim']}; the method was built with dim {self.dim}"
            )
        self.load_training_state(load_file(str(weights)))
        self.training_record = stored.get("meta") or None
