"""The method contract: what a plugin provides, and what the harness does for it.

A method owns its preprocessing (image transform, tokenizer) and its encoders; the harness owns
batching, device placement, mixed precision, progress and caching, so a plugin stays small. What a
method can do beyond encoding is a type, and the harness and the training loop dispatch on it:

- ``Method``: a dual encoder; one embedding per item, compared by cosine.
- ``PairwiseMethod``: a cross-modal scorer; feature dictionaries per item, scored in blocks of
  images x texts.
- ``ShortlistMethod``: a two-stage scorer (a cross-encoder); a dual-encoder first stage shortlists
  each query's top k, and the method scores only those (query, candidate) pairs
  (``tbps_bench.shortlist``).
- ``FrozenBackbone``: encoders that never change; the harness caches their outputs once, whatever
  the checkpoint, and the method's trained ``project_*`` heads run on them afterwards.
- ``Trainable``: the hooks of the shared training loop (``tbps_bench.training``).

Inside the harness, features are always a dict of tensors; a tensor returned by an encoder is taken
as ``{"embedding": tensor}``. Every module a method runs lives in ``self.network`` (one
``nn.Module``), so ``to``, ``train`` / ``eval`` and ``state_dict`` are ordinary module calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbps_bench.errors import BenchError
from tbps_bench.features import Features, feature_count, feature_rows
from tbps_bench.splits import EvalSplit

EMBEDDING = "embedding"


def as_features(output: torch.Tensor | Mapping[str, torch.Tensor]) -> Features:
    """An encoder's output as a feature dict (a plain tensor is a dual encoder's embedding)."""
    return {EMBEDDING: output} if isinstance(output, torch.Tensor) else dict(output)


def global_batch(batch: Mapping[str, Any], value: Any) -> Any:
    """``value`` (batch features or labels: a tensor, or dicts/tuples of them) over the global batch.

    In a distributed run each process holds a slice of the batch; a batch-level loss (CMPM, CMPC,
    SDM, InfoNCE) computed on the gathered values sees the same batch as one process would, and the
    loop turns the gradients into the single-process ones. In one process it returns ``value``."""
    gather = batch.get("gather")
    return gather(value) if gather is not None else value


class Method:
    """Base class of every method plugin: preprocessing and encoders.

    Subclasses set ``name`` and implement ``encode_images`` / ``encode_texts``; they override
    ``image_transform`` and ``tokenize`` to own their preprocessing. Keyword arguments given on the
    command line (``--method-arg key=value``) arrive in ``__init__`` and are recorded in results.
    """

    name: str = "method"
    #: methods that never look at pixels (sanity baselines) skip image decoding entirely
    needs_pixels: bool = True
    #: False for methods without weights: --checkpoint is then refused instead of recorded unread
    reads_checkpoint: bool = True
    #: what makes this method small enough for the smoke test over every registered method (a few
    #: toy-pedes items): ``--method-arg`` values (``key=value``) or an option and its value
    #: (``"--checkpoint", PATH``); ``{fixtures}`` stands for the repository's ``tests/fixtures``
    smoke_arguments: tuple[str, ...] = ()
    #: the name the registry built it under (set by the harness): the feature cache keys on it, so
    #: two plugins whose classes share a ``name`` never share an entry
    registered_as: str | None = None

    def __init__(self, device: str | torch.device = "cpu", checkpoint: str | None = None, **options: Any):
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.options = dict(options)
        #: what the loaded weights were trained on ({"dataset": ..., "selected_on": ..., ...}); None = untrained
        self.training_record: dict[str, Any] | None = None
        #: the dataset that external weights were trained on, as the user labels them (``trained_on=``)
        self.trained_on: str | None = None
        #: every module the method runs; attach submodules and parameters as attributes
        self.network = nn.Module()

    # -- description, recorded in results and in the cache key
    def arguments(self) -> dict[str, Any]:
        return dict(self.options)

    def encoder_arguments(self) -> dict[str, Any]:
        """The arguments that change encoded features (the feature cache key); scoring-only
        options such as re-ranking stay out, so changing them reuses cached features."""
        return self.arguments()

    def preprocessing(self) -> dict[str, Any]:
        """Everything about preprocessing that changes numbers (size, normalisation, tokenizer)."""
        return {}

    def protocol(self) -> dict[str, Any]:
        """Choices of the scoring protocol that a leaderboard must show (re-ranking, shortlists)."""
        return {}

    # -- preprocessing
    def for_dataset(self, dataset: str) -> None:
        """Called before a dataset's split is encoded, for a method whose preprocessing depends on
        the dataset (APTM's per-dataset normalisation); ``preprocessing()`` must then say what it
        chose. An unknown dataset it cannot serve raises ``BenchError``."""

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision.transforms import functional as F

        return F.pil_to_tensor

    def tokenize(self, captions: list[str]) -> Mapping[str, torch.Tensor]:
        """Token tensors for a batch; a boolean ``truncated`` entry (per caption) is counted into
        the result, so that no caption is cut silently."""
        return {}

    # -- encoders: batches are dicts with "pixels" / "tokens", "pid" and "index" (dataset order)
    def encode_images(self, batch: Mapping[str, Any]) -> torch.Tensor | Features:
        raise NotImplementedError

    def encode_texts(self, batch: Mapping[str, Any]) -> torch.Tensor | Features:
        raise NotImplementedError

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        """Cheap checks of ``--method-arg`` values (ranges, choices) made before any work, so that a
        wrong value stops the command in one line; the types declared on ``__init__`` are checked
        already. Raise ``BenchError``. Checks that need the checkpoint stay in ``__init__``."""

    # -- modules
    def to(self, device: str | torch.device) -> Method:
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def train(self, mode: bool = True) -> Method:
        self.network.train(mode)
        return self

    def eval(self) -> Method:
        return self.train(False)


class PairwiseMethod(Method):
    """A cross-modal scorer: the score of a pair needs both items' features at once."""

    @property
    def scores_blockwise(self) -> bool:
        """Whether a pair's score depends only on the two items (so that processes can each score
        a block). True for ``score_all`` as defined here; a method that overrides it with scores
        that need the whole matrix (shortlists, re-ranking) says False."""
        return type(self).score_all is PairwiseMethod.score_all

    def score_pairs(self, image_features: Features, text_features: Features) -> torch.Tensor:
        """Scores of a block, images x texts."""
        raise NotImplementedError

    def score_all(self, image_features: Features, text_features: Features, block: int = 256) -> torch.Tensor:
        """The whole (texts x images) matrix, from ``score_pairs`` on blocks.

        Methods override this when a score needs more than one block at a time (shortlists,
        re-ranking); extra protocol choices then go in ``protocol()``."""
        n_images, n_texts = feature_count(image_features), feature_count(text_features)
        scores = torch.empty(n_texts, n_images)
        with torch.inference_mode():
            for i in range(0, n_images, block):
                image_rows = feature_rows(image_features, slice(i, i + block), self.device)
                for t in range(0, n_texts, block * 4):
                    texts = feature_rows(text_features, slice(t, t + block * 4), self.device)
                    scores[t : t + block * 4, i : i + block] = self.score_pairs(image_rows, texts).float().T.cpu()
        return scores


class FillRule(StrEnum):
    """Where the items outside a query's shortlist rank."""

    #: the authors' rule: every one at the method's fill value (RaSa / MARS: -100), tied, so in
    #: gallery order, below every shortlisted item
    AUTHORS = "authors"
    #: below every shortlisted item, in the order of their first-stage scores
    FIRST_STAGE = "first-stage"


@dataclass(frozen=True)
class Shortlist:
    """The re-ranking protocol of a ``ShortlistMethod``, recorded with every result."""

    k: int
    fill: FillRule
    fill_value: float

    @classmethod
    def parse(cls, k: object, fill: object, fill_value: float) -> Shortlist:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BenchError(f"k (the shortlist size) must be an integer >= 1; got {k!r}")
        try:
            rule = FillRule(fill)
        except ValueError:
            raise BenchError(f"fill must be one of {', '.join(r.value for r in FillRule)}; got {fill!r}") from None
        return cls(k, rule, float(fill_value))

    def rerank_label(self, stage: str) -> str:
        """The leaderboard's re-ranking column: what re-scores, the shortlist size and the fill."""
        fill = "" if self.fill is FillRule.AUTHORS else ", first-stage fill"
        return f"{stage} top-{self.k}{fill}"


@dataclass(frozen=True)
class ShortlistScores:
    """One direction's shortlists and scores, as a method's ``final_rows`` reads them."""

    direction: str  # "t2i" or "i2t"
    index: torch.Tensor  # (queries, k) gallery indices, best first stage first
    second: torch.Tensor  # (queries, k) second-stage scores of those items
    gallery: int
    first_stage_min: float  # over the whole (queries x gallery) first-stage matrix
    first_stage_max: float


class ShortlistMethod(Method):
    """A two-stage scorer. The first stage is a dual encoder: ``encode_*`` return a unit
    ``embedding`` (plus whatever the second stage reads); the harness ranks every query by cosine,
    exactly and with ties by gallery index, and keeps its top ``k``. The second stage,
    ``score_pairs``, scores (text, image) pairs; the harness batches many queries' pairs grouped by
    image, places them on the device, and fills the rest of each row by the ``fill`` rule.

    Text to image is the authors' protocol; image to text is the same with roles swapped (per image,
    its k texts of highest first-stage score), which the results label as such.

    Options: ``k`` (shortlist size: the checkpoint's stored value, else ``default_k``), ``fill``
    (``authors`` or ``first-stage``); they are recorded in ``protocol()``, not among the arguments, so
    changing them reuses the cached features."""

    #: the value of every non-shortlisted entry under ``FillRule.AUTHORS``
    fill_value: float = -100.0
    #: what the second stage is called in leaderboards ("itm": image-text matching)
    second_stage: str = "rerank"
    #: whether the authors' own evaluation ranks images for texts only
    authors_directions: tuple[str, ...] = ("t2i",)

    #: the shortlist size unless the user or the method's checkpoint says otherwise
    default_k: int = 128

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        k = arguments.get("k")
        Shortlist.parse(cls.default_k if k is None else k, arguments.get("fill", "authors"), cls.fill_value)

    def __init__(self, k: int | None = None, fill: str = "authors", **kwargs: Any):
        super().__init__(**kwargs)
        self._requested_k = k
        self.shortlist = Shortlist.parse(self.default_k if k is None else k, fill, self.fill_value)

    def use_stored_k(self, k: int | None) -> None:
        """The shortlist size a checkpoint's own config stores, unless the user gave ``k``."""
        if self._requested_k is None and k is not None:
            self.shortlist = Shortlist.parse(k, self.shortlist.fill.value, self.fill_value)

    def protocol(self) -> dict[str, Any]:
        return {
            "rerank": self.shortlist.rerank_label(self.second_stage),
            "shortlist_k": self.shortlist.k,
            "shortlist_fill": self.shortlist.fill.value,
            "shortlist_fill_value": self.shortlist.fill_value if self.shortlist.fill is FillRule.AUTHORS else None,
            "shortlist_first_stage": "cosine of the unit embeddings, ties by gallery index",
            "authors_directions": list(self.authors_directions),
        }

    def final_rows(self, scores: ShortlistScores, rows: slice, first_stage_rows: torch.Tensor) -> torch.Tensor | None:
        """The final scores of queries ``rows`` over the whole gallery, for a method whose protocol
        combines the two stages (APTM's fusion); None (the default) applies the ``fill`` rule.
        ``first_stage_rows`` are those queries' first-stage scores; ``scores`` holds the whole
        direction's shortlists and the first stage's range over the whole matrix."""
        return None

    def score_pairs(self, images: Features, texts: Features, pair_image: torch.Tensor) -> torch.Tensor:
        """Second-stage scores of P pairs, (P,): ``texts`` holds one row per pair; ``images`` the
        distinct images of the batch, pair p pairing with ``images[pair_image[p]]`` (``pair_image``
        is non-decreasing: pairs arrive grouped by image, so per-image work is done once)."""
        raise NotImplementedError


class FrozenBackbone:
    """Mixin: ``encode_*`` are frozen backbones; ``project_*`` are the (trained) heads on their output.

    The harness caches backbone features once for any checkpoint and applies the heads afterwards;
    the training loop hands the cached train-split features to ``training_losses`` as
    ``image_features`` / ``text_features``."""

    def project_images(self, features: Features) -> torch.Tensor | Features:
        raise NotImplementedError

    def project_texts(self, features: Features) -> torch.Tensor | Features:
        raise NotImplementedError


class Trainable:
    """Mixin: the hooks of the shared training loop (``tbps-bench train``).

    The trained state is ``trained_modules().state_dict()`` (the whole ``network`` unless a frozen
    part is left out), so resume files need no per-method code."""

    network: nn.Module

    def default_training_config(self) -> dict[str, Any]:
        """The schedule this method is trained with unless the user gives one."""
        raise NotImplementedError

    def prepare_training(self, num_classes: int, config: dict[str, Any], train_split: EvalSplit) -> None:
        """Build what training needs beyond inference: loss heads sized to ``num_classes``, and
        anything read once from the train split (a vocabulary)."""

    def prepare_epoch(self, captions: list[str]) -> None:
        """Called before each epoch with the captions its steps read (this process's share, in no
        particular order): a method with a frozen text encoder can encode them together up front.
        A resumed run calls it for the epochs it skips too, in order, so that such state is built as
        in a run straight through."""

    def train_image_transform(self) -> Callable[[Any], torch.Tensor]:
        return self.image_transform()  # type: ignore[attr-defined]

    def parameter_groups(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Optimizer groups: ``params`` plus their own ``lr`` / ``weight_decay``."""
        raise NotImplementedError

    def training_losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; ``total`` is minimised. The batch holds ``pixels`` (or, for a
        ``FrozenBackbone``, the cached ``image_features`` / ``text_features``), ``tokens``,
        ``captions``, ``labels`` and the train split's ``caption_index`` / ``image_index``."""
        raise NotImplementedError

    def trained_modules(self) -> nn.Module:
        """The part of ``network`` that training changes (its state is the resume state)."""
        return self.network

    def save_checkpoint(self, folder: str | Path, record: dict[str, Any]) -> None:
        """A checkpoint that ``--checkpoint`` loads back, with ``record`` as its training record."""
        raise NotImplementedError
