"""CMPM + CMPC: global image and text embeddings, trained with the identity-matching losses.

Image: a torchvision ResNet (50 by default), average-pooled, then a linear projection. Text: word
embeddings over a vocabulary built from the training captions (words seen at least ``min_count``
times; others map to an unknown token), a bidirectional LSTM, max-pooled over the words, then a
linear projection.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tbps_bench.checkpoints import load_state, read_json, read_tensors
from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir
from tbps_bench.methods import Method, Trainable, global_batch
from tbps_models.local_weights import resolve_trunk_weights
from tbps_models.losses import cmpc_loss, cmpm_loss
from tbps_models.transforms import person_image_transform

WORD = re.compile(r"[a-z0-9]+")
PAD, UNKNOWN = "<pad>", "<unk>"
SCHEDULE = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 2e-4,
    "backbone_lr_factor": 0.1,
    "backbone_weight_decay": 4e-5,
    "warmup_epochs": 0,
    "warmup_factor": 1.0,
    "milestones": [20],
    "gamma": 0.1,
}


def words(caption: str) -> list[str]:
    return WORD.findall(caption.lower())


class TextEncoder(nn.Module):
    def __init__(self, vocabulary: int, embedding: int, hidden: int, out: int):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding, padding_idx=0)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True, bidirectional=True)
        self.projection = nn.Linear(2 * hidden, out)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(ids), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.lstm(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, padding_value=float("-inf"))
        return self.projection(output.max(dim=1).values)


class CmpmCmpcMethod(Trainable, Method):
    """Options: ``trunk`` (resnet18/34/50), ``trunk_weights`` (torchvision state dict), ``dim`` (512),
    ``min_count`` (2), ``image_height`` / ``image_width`` (384 x 128)."""

    name = "cmpm-cmpc"
    smoke_arguments = ("trunk=resnet18", "image_height=64", "image_width=32")

    def __init__(
        self,
        trunk: str = "resnet50",
        trunk_weights: str | None = None,
        dim: int = 512,
        min_count: int = 2,
        image_height: int = 384,
        image_width: int = 128,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        import torchvision

        if trunk not in ("resnet18", "resnet34", "resnet50"):
            raise BenchError(f"cmpm-cmpc trunk must be resnet18, resnet34 or resnet50; got {trunk!r}")
        self.settings = {
            "trunk": trunk,
            "dim": int(dim),
            "min_count": int(min_count),
            "size": [image_height, image_width],
        }
        stored = self._read_checkpoint() if self.checkpoint else None
        if stored is not None:
            self.settings = stored["settings"]
        trunk_model = getattr(torchvision.models, self.settings["trunk"])(weights=None)
        if trunk_weights and stored is None:
            state = torch.load(resolve_trunk_weights(trunk_weights, trunk), map_location="cpu", weights_only=True)
            trunk_model.load_state_dict(state)
        channels = trunk_model.fc.in_features
        trunk_model.fc = nn.Identity()
        self.network.image_trunk = trunk_model
        self.network.image_projection = nn.Linear(channels, self.settings["dim"])
        self.vocabulary = stored["vocabulary"] if stored else [PAD, UNKNOWN]
        self._build_text()
        if stored is not None:
            weights = Path(self.checkpoint) / "model.safetensors"
            tensors = read_tensors(weights, self.name)
            if "classifier" in tensors:  # the identity classifier is a training-only head
                self.network.classifier = nn.Parameter(torch.empty_like(tensors["classifier"]))
            load_state(self.network, tensors, str(weights), self.name)
            self.training_record = stored.get("meta") or None

    def _build_text(self) -> None:
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.network.text_encoder = TextEncoder(len(self.vocabulary), 300, 512, self.settings["dim"])

    def _read_checkpoint(self) -> dict[str, Any]:
        path = Path(self.checkpoint) / "config.json"
        stored = read_json(path, self.name)
        for key, kind in (("settings", dict), ("vocabulary", list)):
            if not isinstance(stored.get(key), kind):
                raise BenchError(f"{path}: no '{key}'; this is not a cmpm-cmpc checkpoint (another method's folder?)")
        return stored

    def arguments(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings.items() if k != "size"}

    def preprocessing(self) -> dict[str, Any]:
        return {"image_size": self.settings["size"], "normalize": "imagenet", "vocabulary": len(self.vocabulary)}

    def image_transform(self, flip: bool = False):
        return person_image_transform(self.settings["size"], flip=flip)

    def train_image_transform(self):
        return self.image_transform(flip=True)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        rows = [[self.index.get(w, 1) for w in words(c)] or [1] for c in captions]
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return {"ids": ids, "lengths": torch.tensor([len(r) for r in rows])}

    def encode_images(self, batch):
        return self.network.image_projection(self.network.image_trunk(batch["pixels"]))

    def encode_texts(self, batch):
        return self.network.text_encoder(batch["tokens"]["ids"], batch["tokens"]["lengths"])

    # -- training
    def default_training_config(self) -> dict[str, Any]:
        return dict(SCHEDULE)

    def prepare_training(self, num_classes: int, config: dict[str, Any], train_split) -> None:
        counts = Counter(w for caption in train_split.captions for w in words(caption))
        kept = sorted(w for w, n in counts.items() if n >= self.settings["min_count"])
        self.vocabulary = [PAD, UNKNOWN, *kept]
        self._build_text()
        self.network.classifier = nn.Parameter(torch.empty(self.settings["dim"], num_classes))
        nn.init.xavier_uniform_(self.network.classifier)
        self.network.to(self.device)

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        trunk = list(self.network.image_trunk.parameters())
        trunk_ids = {id(p) for p in trunk}
        heads = [p for p in self.network.parameters() if id(p) not in trunk_ids]
        low = config["lr"] * config["backbone_lr_factor"]
        return [
            {"params": trunk, "lr": low, "weight_decay": config["backbone_weight_decay"]},
            {"params": heads, "lr": config["lr"], "weight_decay": 0.0},
        ]

    def training_losses(self, batch) -> dict[str, torch.Tensor]:
        image, text = self.encode_images(batch), self.encode_texts(batch)
        image, text, labels = global_batch(batch, (image, text, batch["labels"]))
        terms = {
            "cmpm": cmpm_loss(image, text, labels),
            "cmpc": cmpc_loss(image, text, labels, self.network.classifier),
        }
        return {**terms, "total": terms["cmpm"] + terms["cmpc"]}

    def save_checkpoint(self, folder, record: dict[str, Any]) -> None:
        with atomic_dir(folder) as tmp:
            state = self.network.state_dict()
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"))
            stored = {"settings": self.settings, "vocabulary": self.vocabulary, "meta": record}
            (tmp / "config.json").write_text(json.dumps(stored, indent=1))
