"""``rasa`` and ``mars``: released ALBEF-family cross-encoders, evaluated as their authors' code does
(ITC shortlist of k = 128, ITM logits on it, -100 elsewhere), text to image and, labelled as not in
their evaluation, image to text."""

from __future__ import annotations

import sys
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.methods import ShortlistMethod
from tbps_models.albef.checkpoint import Family, load_albef
from tbps_models.albef.model import AlbefModel
from tbps_models.albef.tokenizer import CaptionTokenizer
from tbps_models.transforms import person_image_transform

#: ALBEF's normalisation is CLIP's (``dataset/__init__.py``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _optional_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BenchError(f"{name} must be an integer; got {value!r}")
    return value


class RasaMethod(ShortlistMethod):
    """Options: ``k`` (shortlist, 128 as every released config), ``fill`` (``authors``: -100 outside
    the shortlist; ``first-stage``), ``trained_on`` (the dataset the checkpoint was trained on),
    ``vocab`` (bert-base-uncased ``vocab.txt``; found in an installed offline package otherwise),
    and for a file without a stored config: ``max_words``, ``fusion_layer``, ``heads`` (text) and
    ``vision_heads``. ``--checkpoint``: the authors' ``checkpoint.pth``."""

    name = "rasa"
    family = Family.RASA
    second_stage = "itm"

    def __init__(
        self,
        trained_on: str | None = None,
        vocab: str | None = None,
        max_words: int | None = None,
        fusion_layer: int | None = None,
        heads: int | None = None,
        vision_heads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.checkpoint is None:
            raise BenchError(f"{self.name} needs --checkpoint FILE: a {self.name.upper()} checkpoint.pth")
        if trained_on is not None:
            from tbps_bench.registry import DATASETS

            DATASETS.entry(trained_on)  # an unknown name stops here, with did-you-mean
        self.trained_on = trained_on
        overrides = {
            "max_words": _optional_int("max_words", max_words),
            "fusion_layer": _optional_int("fusion_layer", fusion_layer),
            "heads": _optional_int("heads", heads),
            "vision_heads": _optional_int("vision_heads", vision_heads),
        }
        loaded = load_albef(self.checkpoint, self.family, **overrides)
        self._tokenizer = CaptionTokenizer(vocab, loaded.shape.max_words)
        self.network.model = AlbefModel.from_checkpoint(loaded, str(self.checkpoint))
        for note in loaded.notes:
            print(f"note: {self.checkpoint}: {note}", file=sys.stderr)
        if loaded.ignored:
            count = sum(loaded.ignored.values())
            names = ", ".join(sorted(loaded.ignored))
            print(f"note: {self.checkpoint}: ignored {count} training-only entries ({names})", file=sys.stderr)

    @property
    def model(self) -> AlbefModel:
        return self.network.model

    def arguments(self) -> dict[str, Any]:
        shape = self.model.shape
        return {
            **super().arguments(),
            "trained_on": self.trained_on,
            "max_words": shape.max_words,
            "fusion_layer": shape.bert.fusion_layer,
            "heads": shape.bert.heads,
            "vision_heads": shape.vit.heads,
        }

    def encoder_arguments(self) -> dict[str, Any]:
        return {k: v for k, v in self.arguments().items() if k != "trained_on"}  # a label, not a feature

    def preprocessing(self) -> dict[str, Any]:
        side = self.model.shape.vit.image_size
        return {
            "image_size": [side, side],
            "resize": "bicubic (PIL)",
            "normalize": "clip",
            "caption_cleaning": "pre_caption",
            "tokenizer": "bert-wordpiece-uncased, [CLS] without [SEP]",
            "vocab_sha256": self._tokenizer.sha256,
            "max_words": self.model.shape.max_words,
        }

    def image_transform(self):
        side = self.model.shape.vit.image_size
        return person_image_transform((side, side), CLIP_MEAN, CLIP_STD, interpolation="bicubic")

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self._tokenizer(captions)

    def encode_images(self, batch) -> dict[str, torch.Tensor]:
        return self.model.image_features(batch["pixels"])

    def encode_texts(self, batch) -> dict[str, torch.Tensor]:
        return self.model.text_features(batch["tokens"]["ids"], batch["tokens"]["mask"])

    def score_pairs(self, images, texts, pair_image) -> torch.Tensor:
        return self.model.match(images["tokens"], texts, pair_image)


class MarsMethod(RasaMethod):
    """MARS: as ``rasa``; every text layer carries cross-attention and the matching runs the token ids
    through all of them. ``fusion_layer`` (the text-only layers of the contrastive features) is not
    in the shapes: half the layers, as the released ``config_bert-fullca.json``."""

    name = "mars"
    family = Family.MARS
