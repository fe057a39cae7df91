"""The method contract: what a plugin provides, and what the harness does for it.

A method owns its preprocessing (image transform, tokenizer) and its encoders. The harness owns
batching, device placement, mixed precision, progress and caching, so a plugin stays small.
A dual-encoder returns one embedding per item; a cross-modal method (``pairwise = True``) returns
feature dictionaries and scores blocks of images x texts with ``score_pairs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

Features = torch.Tensor | dict[str, torch.Tensor]


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

    # -- description, recorded in results and in the cache key
    def arguments(self) -> dict[str, Any]:
        return dict(self.options)

    def preprocessing(self) -> dict[str, Any]:
        """Everything about preprocessing that changes numbers (size, normalisation, tokenizer)."""
        return {}

    # -- preprocessing
    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision.transforms import functional as F

        return F.pil_to_tensor

    def tokenize(self, captions: list[str]) -> Mapping[str, torch.Tensor]:
        return {}

    # -- encoders: batches are dicts with "pixels" / "tokens", "pid" and "index" (dataset order)
    def encode_images(self, batch: Mapping[str, Any]) -> Features:
        raise NotImplementedError

    def encode_texts(self, batch: Mapping[str, Any]) -> Features:
        raise NotImplementedError

    # -- cross-modal scoring: (images x texts) block
    def score_pairs(self, image_features: Features, text_features: Features) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not a pairwise method")

    def eval(self) -> Method:
        for module in self.modules():
            module.eval()
        return self

    def modules(self) -> list[torch.nn.Module]:
        return [value for value in vars(self).values() if isinstance(value, torch.nn.Module)]

    def to(self, device: str | torch.device) -> Method:
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self
