"""NAFS as a tbps-bench method: a pairwise scorer with optional shortlist and re-ranking."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbps_bench.errors import BenchError
from tbps_bench.features import PACKED, PACKED_LENGTHS
from tbps_bench.methods import Features, PairwiseMethod, Trainable, global_batch
from tbps_models.nafs.checkpoint import load_official_checkpoint, load_own_checkpoint, save_own_checkpoint
from tbps_models.nafs.config import NafsConfig
from tbps_models.nafs.losses import NafsLoss
from tbps_models.nafs.model import Nafs
from tbps_models.nafs.presets import expand_offline_text_encoder, preset
from tbps_models.nafs.rerank import RERANK_CHOICES, rerank_rvn, rerank_rvn_official
from tbps_models.nafs.scoring import local_similarity_candidates
from tbps_models.nafs.tokenization import NafsTokenizer
from tbps_models.transforms import IMAGENET_MEAN, IMAGENET_STD, person_image_transform

_SCORE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: text elements are stored packed, at each caption's true length
_TEXT_KEY, _TEXT_VALUE = "local_text_key" + PACKED, "local_text_value" + PACKED
#: shortlisted pairs outrank every other pair: |S| <= 2 for scored pairs
_UNSCORED_OFFSET = 10.0
#: captions per pass of a frozen text encoder over the train split
_FROZEN_TEXT_CHUNK = 512


class NafsMethod(Trainable, PairwiseMethod):
    """Options (``--method-arg``): ``config`` (a preset name or a JSON file of NafsConfig fields),
    ``text_encoder`` (BERT folder), ``trunk_weights`` (torchvision state dict), ``rerank``
    (none | rvn | rvn-official), ``shortlist`` (K > 0: local term only for each text's top-K images by
    the global score, and each image's top-K texts; 0 = exhaustive), ``rerank_k`` (5).
    ``--checkpoint``: a tbps-bench checkpoint folder, or a file in the authors' release format."""

    name = "nafs"
    smoke_arguments = ("config=nafs-tiny",)
    default_preset = "nafs"

    def __init__(
        self,
        config: str | None = None,
        text_encoder: str | None = None,
        trunk_weights: str | None = None,
        rerank: str = "none",
        shortlist: int = 0,
        rerank_k: int = 5,
        score_dtype: str = "fp32",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if score_dtype not in _SCORE_DTYPES:
            raise BenchError(f"NAFS score_dtype must be one of {', '.join(_SCORE_DTYPES)}; got {score_dtype!r}")
        self.score_dtype = score_dtype
        if rerank not in RERANK_CHOICES:
            raise BenchError(f"NAFS rerank must be one of {', '.join(RERANK_CHOICES)}; got {rerank!r}")
        self.rerank, self.shortlist, self.rerank_k = rerank, int(shortlist), int(rerank_k)
        self.config_name = config or self.default_preset
        #: caption -> frozen text encoder outputs, filled during training when the encoder is frozen
        self._frozen_text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        #: token batch digest -> frozen text encoder outputs, for evaluations during training
        self._frozen_batches: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        model_config, self.schedule = self._model_settings(self.config_name)
        self.overrides = {k: v for k, v in {"text_encoder": text_encoder, "trunk_weights": trunk_weights}.items() if v}
        model_config.update(self.overrides)
        self.network.model = self._load(model_config)
        self.tokenizer = NafsTokenizer(
            self.model.config.text_encoder, self.model.config.max_length, self.model.config.sub_sentences
        )

    @property
    def model(self) -> Nafs:
        return self.network.model

    @property
    def loss(self) -> NafsLoss | None:
        return getattr(self.network, "loss", None)

    @staticmethod
    def _model_settings(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A preset name, or a JSON file ``{"base": preset, "model": {...}, "train": {...}}``."""
        if not name.endswith(".json"):
            chosen = preset(name)
            return chosen["model"], chosen["train"]
        try:
            values = json.loads(Path(name).read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"cannot read NAFS config {name}: {exc}") from exc
        unknown = sorted(set(values) - {"base", "model", "train"}) if isinstance(values, dict) else ["<not an object>"]
        if unknown:
            raise BenchError(f"NAFS config {name}: unexpected top-level keys {unknown}; expected base, model, train")
        chosen = preset(values.get("base", "nafs"))
        model = {**chosen["model"], **values.get("model", {})}
        return model, {**chosen["train"], **values.get("train", {})}

    def _load(self, model_config: dict[str, Any]) -> Nafs:
        model_config["text_encoder"] = expand_offline_text_encoder(model_config.get("text_encoder"))
        if self.checkpoint is None:
            return Nafs(NafsConfig.from_dict(model_config))
        path = Path(self.checkpoint)
        if path.is_dir():
            model, record, _ = load_own_checkpoint(path)
            self.training_record = record or None
            return model
        if model_config.get("text_encoder") is None:
            raise BenchError(
                "an official NAFS checkpoint needs text_encoder=FOLDER (a BERT folder with config + vocab)"
            )
        model = Nafs(NafsConfig.from_dict({**model_config, "text_encoder_pretrained": False}))
        load_official_checkpoint(model, path)
        return model

    # -- description
    def arguments(self) -> dict[str, Any]:
        return {
            "config": self.config_name,
            # folder and file names only: results do not carry the user's paths
            **{k: Path(v).name for k, v in self.overrides.items()},
            "rerank": self.rerank,
            "shortlist": self.shortlist,
            "rerank_k": self.rerank_k,
            "score_dtype": self.score_dtype,
        }

    def encoder_arguments(self) -> dict[str, Any]:
        return {"config": self.config_name, **self.overrides}

    def preprocessing(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "image_size": [config.image_height, config.image_width],
            "resize": "bilinear, aspect not kept",
            "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            "tokenizer": "official NAFS scheme (full caption + sub-sentences)",
            "vocab": Path(config.text_encoder).name + "/vocab.txt",
            "max_length": config.max_length,
        }

    def protocol(self) -> dict[str, Any]:
        return {"rerank": self.rerank, "shortlist_k": self.shortlist or None, "score_dtype": self.score_dtype}

    # -- preprocessing
    def image_transform(self, flip: bool = False):
        config = self.model.config
        return person_image_transform((config.image_height, config.image_width), flip=flip)

    def train_image_transform(self):
        return self.image_transform(flip=True)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(captions)

    # -- encoders
    def encode_images(self, batch) -> Features:
        return self.model.encode_images(batch["pixels"])

    def encode_texts(self, batch) -> Features:
        tokens = batch["tokens"]
        inputs = (tokens["tokens"], tokens["mask"], tokens["sub_tokens"], tokens["sub_mask"])
        features = self.model.encode_texts(*inputs, self._frozen_text_of_batch(inputs))
        lengths = tokens["length"].clamp(max=self.model.config.text_elements)
        # each caption's elements at its true length: rows past it are never read
        valid = torch.arange(features["local_text_key"].shape[1], device=lengths.device)[None, :] < lengths[:, None]
        return {
            "global_text_feat": features["global_text_feat"],
            _TEXT_KEY: features["local_text_key"][valid],
            _TEXT_VALUE: features["local_text_value"][valid],
            PACKED_LENGTHS: lengths,
        }

    @staticmethod
    def _text_elements(texts: Features) -> dict[str, torch.Tensor]:
        """The model's names for a packed text feature dict."""
        return {
            "global_text_feat": texts["global_text_feat"],
            "local_text_key": texts[_TEXT_KEY],
            "local_text_value": texts[_TEXT_VALUE],
        }

    # -- scoring
    def score_pairs(self, image_features: Features, text_features: Features) -> torch.Tensor:
        dtype = _SCORE_DTYPES[self.score_dtype]
        texts = self._text_elements(text_features)
        scores, _, _ = self.model.score(image_features, texts, text_features[PACKED_LENGTHS], dtype)
        return scores

    @property
    def scores_blockwise(self) -> bool:
        return self.shortlist <= 0 and self.rerank == "none"  # shortlists and re-ranking see the whole matrix

    def score_all(self, image_features: Features, text_features: Features, block: int = 256) -> torch.Tensor:
        if self.shortlist > 0:
            scores = self._shortlisted(image_features, text_features)
        else:
            scores = super().score_all(image_features, text_features, block)
        if self.rerank == "rvn":
            return rerank_rvn(scores, image_features["global_img_feat"], self.rerank_k)
        if self.rerank == "rvn-official":
            return rerank_rvn_official(scores, image_features["global_img_feat"], self.rerank_k)
        return scores

    @torch.inference_mode()
    def _shortlisted(self, images: Features, texts: Features) -> torch.Tensor:
        """Two stages: the global cosine for all pairs, the local term for the shortlisted ones."""
        unit = torch.nn.functional.normalize
        global_scores = unit(texts["global_text_feat"], dim=1) @ unit(images["global_img_feat"], dim=1).T
        k_images = min(self.shortlist, global_scores.shape[1])
        k_texts = min(self.shortlist, global_scores.shape[0])
        chosen = torch.zeros_like(global_scores, dtype=torch.bool)
        chosen.scatter_(1, global_scores.topk(k_images, dim=1).indices, True)
        chosen.scatter_(0, global_scores.topk(k_texts, dim=0).indices, True)
        per_text = int(chosen.sum(1).max())
        # each text's chosen images first (topk of a 0/1 matrix), padded with unchosen ones
        candidates = chosen.float().topk(per_text, dim=1).indices
        dtype = _SCORE_DTYPES[self.score_dtype]
        local = local_similarity_candidates(
            images["local_img_query"].to(self.device, dtype),
            images["local_img_value"].to(self.device, dtype),
            texts[_TEXT_KEY].to(self.device, dtype),
            texts[_TEXT_VALUE].to(self.device, dtype),
            texts[PACKED_LENGTHS].to(self.device),
            candidates.to(self.device),
            self.model.config.lambda_softmax,
        ).cpu()
        scores = global_scores - _UNSCORED_OFFSET
        full = global_scores.gather(1, candidates) + local
        keep = chosen.gather(1, candidates)
        scores.scatter_(1, candidates, torch.where(keep, full, scores.gather(1, candidates)))
        return scores

    # -- training
    def default_training_config(self) -> dict[str, Any]:
        return dict(self.schedule)

    def prepare_training(self, num_classes: int, config: dict[str, Any], train_split) -> None:
        model_config = self.model.config
        self.network.loss = NafsLoss(
            self.model.feature_size, num_classes, model_config.loss_weights, model_config.lambda_softmax
        ).to(self.device)

    def prepare_epoch(self, captions: list[str]) -> None:
        """With a frozen text encoder, the epoch's captions not yet encoded are encoded together
        (the whole train split before the first epoch): chunks of many captions share their
        repeated sub-sentences, which a 32-caption batch mostly does not (the time saved is in
        docs/benchmarks.md)."""
        if self.model.config.train_text_encoder:
            return
        missing = self._not_yet_frozen(captions)
        if missing:
            started = time.perf_counter()
            self._encode_frozen(missing)
            seconds = time.perf_counter() - started
            print(
                f"frozen text encoder: {len(missing)} train captions, encoded once ({seconds:.0f} s)", file=sys.stderr
            )

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.loss is not None, "prepare_training first"
        image_backbone = list(self.model.image_model.parameters())
        text_backbone = list(self.model.language_model.parameters())
        if not self.model.config.train_text_encoder:
            for parameter in text_backbone:
                parameter.requires_grad_(False)
        backbone_ids = {id(p) for p in image_backbone + text_backbone}
        heads = [p for p in self.model.parameters() if id(p) not in backbone_ids] + list(self.loss.parameters())
        low = config["lr"] * config["backbone_lr_factor"]
        return [
            {
                "params": [p for p in image_backbone if p.requires_grad],
                "lr": low,
                "weight_decay": config["backbone_weight_decay"],
            },
            {"params": [p for p in text_backbone if p.requires_grad], "lr": low, "weight_decay": 0.0},
            {"params": [p for p in heads if p.requires_grad], "lr": config["lr"], "weight_decay": 0.0},
        ]

    def trained_modules(self) -> nn.Module:
        """With a frozen text encoder, everything but it: a resumed run loads the encoder again from
        where the method was built, so the resume file need not hold it."""
        if self.model.config.train_text_encoder:
            return self.network
        model = nn.ModuleDict({name: part for name, part in self.model.named_children() if name != "language_model"})
        return nn.ModuleDict({"model": model, **({"loss": self.loss} if self.loss is not None else {})})

    def train(self, mode: bool = True) -> NafsMethod:
        super().train(mode)
        if not self.model.config.train_text_encoder:
            self.model.language_model.eval()  # frozen: no dropout, so its outputs can be reused
        return self

    def _frozen_text_of_batch(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """While training with a frozen text encoder, each evaluation batch (the selection split's,
        every epoch) is encoded once: the same batch gives the same outputs, bit for bit, so they are
        kept by content (val of toy-pedes: 6 of an epoch's 8 evaluation seconds on 2 cores)."""
        if self.model.config.train_text_encoder or self.loss is None:
            return None
        key = hashlib.sha256()
        for tensor in inputs:
            key.update(str(tuple(tensor.shape)).encode())
            key.update(tensor.cpu().numpy().tobytes())
        digest = key.digest()
        if digest not in self._frozen_batches:
            with torch.no_grad():
                self._frozen_batches[digest] = self.model.language_model(*inputs)
        return self._frozen_batches[digest]

    def _not_yet_frozen(self, captions: list[str]) -> list[str]:
        """The distinct captions without frozen encoder outputs yet, sorted (a fixed encoding order)."""
        return sorted({c for c in captions if c not in self._frozen_text})

    def _encode_frozen(self, captions: list[str]) -> None:
        """The frozen text encoder's outputs for ``captions``, kept for every later epoch. Encoded
        in chunks of many captions, so that repeated sub-sentences are encoded once per chunk."""
        for start in range(0, len(captions), _FROZEN_TEXT_CHUNK):
            chunk = captions[start : start + _FROZEN_TEXT_CHUNK]
            tokens = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
            with torch.no_grad():
                hidden, sub_cls = self.model.language_model(
                    tokens["tokens"], tokens["mask"], tokens["sub_tokens"], tokens["sub_mask"]
                )
            for row, caption in enumerate(chunk):
                self._frozen_text[caption] = (hidden[row].float(), sub_cls[row].float())

    def _encoder_outputs(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Frozen text encoder: each caption's outputs are computed once and reused every epoch."""
        if self.model.config.train_text_encoder:
            return None
        self._encode_frozen(self._not_yet_frozen(captions))
        pairs = [self._frozen_text[c] for c in captions]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def training_losses(self, batch) -> dict[str, torch.Tensor]:
        assert self.loss is not None, "prepare_training first"
        tokens = batch["tokens"]
        images = self.model.encode_images(batch["pixels"])
        texts = self.model.encode_texts(
            tokens["tokens"],
            tokens["mask"],
            tokens["sub_tokens"],
            tokens["sub_mask"],
            self._encoder_outputs(batch["captions"]),
        )
        return self.loss(*global_batch(batch, (images, texts, tokens["length"], batch["labels"])))

    def save_checkpoint(self, folder, record: dict[str, Any]) -> None:
        extra = {"W": self.loss.W} if self.loss is not None else {}
        save_own_checkpoint(folder, self.model, self.model.config.to_dict(), extra, record)


class NafsTinyMethod(NafsMethod):
    """``nafs-tiny``: ResNet-18 at 64 x 32, frozen MiniLM text encoder; trains on toy-pedes on a CPU."""

    name = "nafs-tiny"
    smoke_arguments = ()
    default_preset = "nafs-tiny"
