"""CLIP through ``transformers.CLIPModel``: zero-shot from a local folder, or fine-tuned by the loop.

Person images are tall (384 x 128 by default): the position embeddings are interpolated to that
patch grid, as the CLIP-based person-search codebases do. The towers are the same code path as the
IRRA-family checkpoints' (``tbps_models.clip_towers.backbone.PersonClip``). Fine-tuning uses the
similarity-distribution-matching loss (``sdm``, the CLIP-based methods' loss) or InfoNCE with every
same-identity pair of the batch as a positive (``infonce``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir
from tbps_bench.methods import Method, Trainable, global_batch
from tbps_models.clip_towers.backbone import CLIP_MEAN, CLIP_STD, PersonClip
from tbps_models.losses import matching_kl
from tbps_models.transforms import person_image_transform

TRAINING_RECORD = "tbps_training.json"
LOSSES = ("sdm", "infonce")
SCHEDULE = {
    "epochs": 60,
    "batch_size": 64,
    "lr": 1e-5,
    "backbone_lr_factor": 1.0,
    "backbone_weight_decay": 4e-5,
    "warmup_epochs": 5,
    "warmup_factor": 0.1,
    "milestones": [30, 50],
    "gamma": 0.1,
}


def identity_distribution(labels: torch.Tensor) -> torch.Tensor:
    """Each row sums to 1 over the same-identity items (L1; CMPM's target is L2-normalised)."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(1, keepdim=True)


def sdm_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(sim / t) || identity distribution), both directions."""
    sim = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature
    target = identity_distribution(labels)
    return matching_kl(sim, target, 1e-8) + matching_kl(sim.T, target, 1e-8)


def infonce_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy towards every same-identity item of the batch, both directions."""
    sim = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature
    target = identity_distribution(labels)
    return -(target * F.log_softmax(sim, dim=1)).sum(1).mean() - (target * F.log_softmax(sim.T, dim=1)).sum(1).mean()


class ClipMethod(Trainable, Method):
    """Options: ``model`` (a CLIPModel folder: config, weights, tokenizer files), ``image_height`` /
    ``image_width`` (384 x 128), ``loss`` (sdm | infonce), ``temperature`` (0.02).
    ``--checkpoint`` takes a folder written by ``tbps-bench train -m clip``."""

    name = "clip"
    smoke_arguments = ("model={fixtures}/smoke/tiny_clip", "image_height=64", "image_width=32")

    def __init__(
        self,
        model: str | None = None,
        image_height: int = 384,
        image_width: int = 128,
        loss: str = "sdm",
        temperature: float = 0.02,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        from transformers import AutoTokenizer, CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if loss not in LOSSES:
            raise BenchError(f"clip loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        folder = Path(self.checkpoint) if self.checkpoint else (Path(model) if model else None)
        if folder is None:
            raise BenchError("clip needs --method-arg model=FOLDER (a CLIPModel folder) or a --checkpoint folder")
        if not (folder / "config.json").is_file():
            raise BenchError(f"CLIP folder {folder} has no config.json; expected a transformers CLIPModel folder")
        try:
            self.network.clip = PersonClip(CLIPModel.from_pretrained(str(folder), local_files_only=True))
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            # tokenize() sees whole captions, counts and cuts them itself: no "indexing errors" warning
            self.tokenizer.model_max_length = sys.maxsize
        except (OSError, ValueError) as exc:
            raise BenchError(f"cannot load CLIP from {folder}: {exc}") from exc
        self.folder = folder
        self.size = (int(image_height), int(image_width))
        self.loss_name, self.temperature = loss, float(temperature)
        self.max_tokens = int(self.network.clip.clip.config.text_config.max_position_embeddings)
        record = folder / TRAINING_RECORD
        if self.checkpoint and record.is_file():
            self.training_record = json.loads(record.read_text())

    def arguments(self) -> dict[str, Any]:
        return {
            "model": self.folder.name if not self.checkpoint else None,
            "mode": "fine-tuned" if self.training_record else "zero-shot",
            "loss": self.loss_name,
        }

    def encoder_arguments(self) -> dict[str, Any]:
        return {"folder": str(self.folder.resolve()), "size": list(self.size)}

    def preprocessing(self) -> dict[str, Any]:
        return {"image_size": list(self.size), "resize": "bicubic", "normalize": "clip", "max_tokens": self.max_tokens}

    def image_transform(self, flip: bool = False):
        return person_image_transform(self.size, CLIP_MEAN, CLIP_STD, flip=flip, interpolation="bicubic")

    def train_image_transform(self):
        return self.image_transform(flip=True)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        full = self.tokenizer(captions, padding=True, truncation=False, return_tensors="pt")
        truncated = full["attention_mask"].sum(1) > self.max_tokens
        ids = full["input_ids"][:, : self.max_tokens].clone()
        # a cut caption keeps its end-of-text token: CLIP pools the text at that position
        ids[truncated, -1] = self.tokenizer.eos_token_id
        return {"input_ids": ids, "truncated": truncated}

    def encode_images(self, batch):
        return self.network.clip.encode_images(batch["pixels"])

    def encode_texts(self, batch):
        return self.network.clip.encode_texts(batch["tokens"]["input_ids"], self.tokenizer.eos_token_id)

    # -- fine-tuning
    def default_training_config(self) -> dict[str, Any]:
        return dict(SCHEDULE)

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        params = [p for p in self.network.parameters() if p.requires_grad]
        return [
            {
                "params": params,
                "lr": config["lr"] * config["backbone_lr_factor"],
                "weight_decay": config["backbone_weight_decay"],
            }
        ]

    def training_losses(self, batch) -> dict[str, torch.Tensor]:
        image, text = self.encode_images(batch), self.encode_texts(batch)
        image, text, labels = global_batch(batch, (image, text, batch["labels"]))
        function = sdm_loss if self.loss_name == "sdm" else infonce_loss
        loss = function(image, text, labels, self.temperature)
        return {self.loss_name: loss, "total": loss}

    def save_checkpoint(self, folder, record: dict[str, Any]) -> None:
        with atomic_dir(folder) as tmp:
            self.network.clip.clip.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
