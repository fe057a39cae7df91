"""The method contract: what a plugin provides, and what the harness does for it.

A method owns its preprocessing (image transform, tokenizer) and its encoders. The harness owns
batching, device placement, mixed precision, progress and caching, so a plugin stays small.
A dual-encoder returns one embedding per item; a cross-modal method (``pairwise = True``) returns
feature dictionaries and scores blocks of images x texts with ``score_pairs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tbps_bench.splits import EvalSplit

Features = torch.Tensor | dict[str, torch.Tensor]


def feature_count(features: Features) -> int:
    return len(features) if isinstance(features, torch.Tensor) else len(next(iter(features.values())))


class Method:
    """Base class of every method plugin.

    Subclasses set ``name`` and implement ``encode_images`` / ``encode_texts``; they override
    ``image_transform`` and ``tokenize`` to own their preprocessing. Keyword arguments given on the
    command line (``--method-arg key=value``) arrive in ``__init__`` and are recorded in results.
    """

    name: str = "method"
    #: cross-modal methods score pairs instead of comparing per-modality embeddings
    pairwise: bool = False
    #: methods that never look at pixels (sanity baselines) skip image decoding entirely
    needs_pixels: bool = True

    def __init__(self, device: str | torch.device = "cpu", checkpoint: str | None = None, **options: Any):
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.options = dict(options)
        #: what the loaded weights were trained on ({"dataset": ..., "selected_on": ..., ...}); None = untrained
        self.training_record: dict[str, Any] | None = None

    # -- description, recorded in results and in the cache key
    def arguments(self) -> dict[str, Any]:
        return dict(self.options)

    #: the encoders are frozen: the harness caches ``encode_*`` outputs whatever the checkpoint, and
    #: applies the trained ``project_images`` / ``project_texts`` to them afterwards
    frozen_backbone: bool = False

    def project_images(self, features: Features) -> Features:
        return features

    def project_texts(self, features: Features) -> Features:
        return features

    def encoder_arguments(self) -> dict[str, Any]:
        """The arguments that change encoded features (the feature cache key); scoring-only
        options such as re-ranking stay out, so changing them reuses cached features."""
        return self.arguments()

    def preprocessing(self) -> dict[str, Any]:
        """Everything about preprocessing that changes numbers (size, normalisation, tokenizer)."""
        return {}

    # -- preprocessing
    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision.transforms import functional as F

        return F.pil_to_tensor

    def tokenize(self, captions: list[str]) -> Mapping[str, torch.Tensor]:
        """Token tensors for a batch; a boolean ``truncated`` entry (per caption) is counted into
        the result, so that no caption is cut silently."""
        return {}

    # -- encoders: batches are dicts with "pixels" / "tokens", "pid" and "index" (dataset order)
    def encode_images(self, batch: Mapping[str, Any]) -> Features:
        raise NotImplementedError

    def encode_texts(self, batch: Mapping[str, Any]) -> Features:
        raise NotImplementedError

    # -- cross-modal scoring: (images x texts) block
    def score_pairs(self, image_features: Features, text_features: Features) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not a pairwise method")

    def score_all(self, image_features: Features, text_features: Features, block: int = 256) -> torch.Tensor:
        """The whole (texts x images) matrix of a pairwise method, from ``score_pairs`` on blocks.

        Methods override this when a score needs more than one block at a time (shortlists,
        re-ranking); extra protocol choices then go in ``protocol()``."""

        def rows(features: Features, part: slice) -> Features:
            if isinstance(features, torch.Tensor):
                return features[part].to(self.device)
            return {k: v[part].to(self.device) for k, v in features.items()}

        n_images, n_texts = feature_count(image_features), feature_count(text_features)
        scores = torch.empty(n_texts, n_images)
        with torch.inference_mode():
            for i in range(0, n_images, block):
                image_rows = rows(image_features, slice(i, i + block))
                for t in range(0, n_texts, block * 4):
                    block_scores = self.score_pairs(image_rows, rows(text_features, slice(t, t + block * 4)))
                    scores[t : t + block * 4, i : i + block] = block_scores.float().T.cpu()
        return scores

    def protocol(self) -> dict[str, Any]:
        """Choices of the scoring protocol that a leaderboard must show (re-ranking, shortlists)."""
        return {}

    # -- training (optional): the shared loop in tbps_bench.training drives these
    trainable: bool = False

    def default_training_config(self) -> dict[str, Any]:
        """The schedule this method is trained with unless the user gives one."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    #: False when training reads cached features only (frozen encoders): the loop skips image decoding
    needs_pixels_in_training: bool = True

    def prepare_training(self, num_classes: int, config: dict[str, Any], train_split: EvalSplit) -> None:
        """Build what training needs beyond inference: loss heads sized to ``num_classes``, and
        anything read once from the train split (a vocabulary, frozen features)."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def train_image_transform(self) -> Callable[[Any], torch.Tensor]:
        return self.image_transform()

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Optimizer groups: ``params`` plus their own ``lr`` / ``weight_decay``."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def training_losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; ``total`` is minimised. The batch holds ``pixels`` (unless
        ``needs_pixels_in_training`` is False), ``tokens``, ``captions``, ``labels`` and the train
        split's ``caption_index`` / ``image_index`` of each item."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def training_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor, for the loop's own resume file."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def load_training_state(self, state: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def save_checkpoint(self, folder: str | Path, record: dict[str, Any]) -> None:
        """A checkpoint that ``--checkpoint`` loads back, with ``record`` as its training record."""
        raise NotImplementedError(f"method '{self.name}' cannot be trained")

    def train(self, mode: bool = True) -> Method:
        for module in self.modules():
            module.train(mode)
        return self

    def eval(self) -> Method:
        return self.train(False)

    def modules(self) -> list[torch.nn.Module]:
        return [value for value in vars(self).values() if isinstance(value, torch.nn.Module)]

    def to(self, device: str | torch.device) -> Method:
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self
