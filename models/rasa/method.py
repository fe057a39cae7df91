"""``rasa`` and ``mars``: released ALBEF-family cross-encoders, evaluated as their authors' code does
(ITC shortlist of k = 128, ITM logits on it, -100 elsewhere), text to image and, labelled as not in
their evaluation, image to text."""

from __future__ import annotations

import functools
from typing import Any

from tbps_models.albef.method import CrossEncoderMethod, optional_int
from tbps_models.albef.tokenizer import CaptionTokenizer, pre_caption
from tbps_models.rasa.checkpoint import Family, load_albef
from tbps_models.rasa.model import AlbefModel
from tbps_models.transforms import person_image_transform

#: ALBEF's normalisation is CLIP's (``dataset/__init__.py``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RasaMethod(CrossEncoderMethod):
    """Options: ``k`` (shortlist, 128 as every released config), ``fill`` (``authors``: -100 outside
    the shortlist; ``first-stage``), ``trained_on`` (the dataset the checkpoint was trained on),
    ``vocab`` (bert-base-uncased ``vocab.txt``; found in an installed offline package otherwise),
    and for a file without a stored config: ``max_words``, ``fusion_layer``, ``heads`` (text) and
    ``vision_heads``. ``--checkpoint``: the authors' ``checkpoint.pth``."""

    name = "rasa"
    smoke_arguments = ("--checkpoint", "{fixtures}/rasa_reference/rasa_checkpoint.pth", "k=3")
    family = Family.RASA

    def __init__(
        self,
        vocab: str | None = None,
        max_words: int | None = None,
        fusion_layer: int | None = None,
        heads: int | None = None,
        vision_heads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        overrides = {
            "max_words": optional_int("max_words", max_words),
            "fusion_layer": optional_int("fusion_layer", fusion_layer),
            "heads": optional_int("heads", heads),
            "vision_heads": optional_int("vision_heads", vision_heads),
        }
        loaded = load_albef(self.checkpoint, self.family, **overrides)
        words = loaded.shape.max_words
        self._tokenizer = CaptionTokenizer(vocab, words, functools.partial(pre_caption, max_words=words))
        self.network.model = AlbefModel.from_checkpoint(loaded, str(self.checkpoint))
        self.use_stored_k(loaded.k_test)
        self.report(loaded.notes, loaded.ignored)

    def arguments(self) -> dict[str, Any]:
        shape = self.model.shape
        return {
            **super().arguments(),
            "max_words": shape.max_words,
            "fusion_layer": shape.bert.fusion_layer,
            "heads": shape.bert.heads,
            "vision_heads": shape.vit.heads,
        }

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


class MarsMethod(RasaMethod):
    """MARS: as ``rasa``; every text layer carries cross-attention and the matching runs the token ids
    through all of them. ``fusion_layer`` (the text-only layers of the contrastive features) is not
    in the shapes: half the layers, as the released ``config_bert-fullca.json``."""

    name = "mars"
    smoke_arguments = ("--checkpoint", "{fixtures}/mars_reference/mars_checkpoint.pth", "k=3")
    family = Family.MARS
