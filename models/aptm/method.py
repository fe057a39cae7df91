"""``aptm``: released APTM checkpoints, evaluated as the authors' code does, its multi-process score
fusion included.

APTM's evaluation (``reTools.py``) shortlists each caption's ``k_test`` images by ITC, scores them by
ITM, fills the rest of a row with the row's smallest ITM logit, min-max normalises the ITM and the ITC
matrices, and ranks ``ITM_norm + 0.002 ITC_norm``. Each process does this for its own rows with every
other row still at 1000.0, and the processes' matrices are summed: the weight of ITC against ITM
depends on the number of processes. Its README evaluates on 4 GPUs and picks the checkpoint on that
evaluation, so ``fusion_world_size=4`` (the published protocol) is the default; ``1`` is the
one-process fusion. It is a property of the score: any torchrun world size gives the same numbers."""

from __future__ import annotations

import functools
import re
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.methods import FillRule, ShortlistScores
from tbps_models.albef.method import CrossEncoderMethod, optional_int
from tbps_models.albef.tokenizer import CaptionTokenizer
from tbps_models.aptm.checkpoint import load_aptm
from tbps_models.aptm.model import AptmModel
from tbps_models.transforms import person_image_transform

#: per-dataset normalisation (``dataset/__init__.py``) and whether captions get the ICFG/RSTP cleaning
DATASET_STATISTICS = {
    "cuhk-pedes": ((0.38901278, 0.3651612, 0.34836376), (0.24344306, 0.23738699, 0.23368555), False),
    "icfg-pedes": ((0.30941582, 0.28956893, 0.30347288), (0.25849792, 0.24547698, 0.2366199), True),
    "rstpreid": ((0.27722597, 0.26065794, 0.3036557), (0.2609547, 0.2508087, 0.25293276), True),
}
#: what the rows other than a process's own hold before its min-max normalisation
UNHANDLED = 1000.0
#: the weight of the normalised ITC matrix in each process's matrix
ITC_WEIGHT = 0.002
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def aptm_pre_caption(caption: str, max_words: int, icfg_rstp: bool) -> str:
    """The authors' cleaning: ICFG-PEDES / RSTPReid lower-case and turn every run of characters outside
    ``[0-9a-z]`` into one space; then at most ``max_words`` whitespace-separated words (a caption within
    the limit is kept as it is)."""
    if icfg_rstp:
        caption = " ".join(_NON_ALNUM.sub(" ", caption.lower()).split())
    words = caption.split()
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    if not caption:
        raise BenchError("a caption is empty after APTM's cleaning (their code stops on it too)")
    return caption


def _triple(name: str, value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int | float) for v in value):
        raise BenchError(f"{name} must be three numbers, e.g. {name}=[0.39,0.37,0.35]; got {value!r}")
    if name == "std" and min(value) <= 0:
        raise BenchError(f"std must be positive; got {value!r}")
    return tuple(float(v) for v in value)


class AptmMethod(CrossEncoderMethod):
    """Options: ``fusion_world_size`` (4: the published 4-process fusion; 1: one process), ``k``
    (shortlist; the checkpoint's ``k_test``, 128 in the released configs), ``trained_on``,
    ``stats`` (whose normalisation and caption cleaning to use on a dataset other than CUHK-PEDES,
    ICFG-PEDES, RSTPReid) or ``mean`` / ``std`` (your own), ``vocab``, ``heads`` (text encoder; width
    / 64 otherwise). ``--checkpoint``: the authors' ``checkpoint.pth``."""

    name = "aptm"
    smoke_arguments = ("--checkpoint", "{fixtures}/aptm_reference/aptm_checkpoint.pth", "k=3", "stats=cuhk-pedes")
    second_stage = "itm"

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        fusion_world_size = arguments.get("fusion_world_size", 4)
        if isinstance(fusion_world_size, bool) or not isinstance(fusion_world_size, int) or fusion_world_size < 1:
            raise BenchError(
                f"fusion_world_size must be an integer >= 1 (4: the published protocol); got {fusion_world_size!r}"
            )
        if arguments.get("fill", FillRule.AUTHORS) != FillRule.AUTHORS:
            raise BenchError("APTM's fusion defines what fills a row outside the shortlist; drop fill=")
        stats = arguments.get("stats")
        if stats is not None and stats not in DATASET_STATISTICS:
            raise BenchError(f"stats must be one of {', '.join(DATASET_STATISTICS)}; got {stats!r}")
        mean, std = _triple("mean", arguments.get("mean")), _triple("std", arguments.get("std"))
        if (mean is None) != (std is None):
            raise BenchError("give mean= and std= together")

    def __init__(
        self,
        fusion_world_size: int = 4,
        stats: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        vocab: str | None = None,
        heads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        given = {"fusion_world_size": fusion_world_size, "stats": stats, "mean": mean, "std": std}
        self.check_arguments({**given, "k": self.shortlist.k, "fill": self.shortlist.fill})
        self.fusion_world_size = fusion_world_size
        self._stats_name, self._mean, self._std = stats, _triple("mean", mean), _triple("std", std)
        loaded = load_aptm(self.checkpoint, optional_int("heads", heads))
        self._shape = loaded.shape
        self._tokenizer = CaptionTokenizer(vocab, loaded.shape.max_tokens, self._cleaning(False))
        self.network.model = AptmModel.from_checkpoint(loaded, str(self.checkpoint))
        self.use_stored_k(loaded.k_test)
        self.report(loaded.notes, loaded.ignored)
        self._normalisation: tuple[str, tuple, tuple, bool] | None = None

    def _cleaning(self, icfg_rstp: bool):
        return functools.partial(aptm_pre_caption, max_words=self._shape.max_words, icfg_rstp=icfg_rstp)

    def for_dataset(self, dataset: str) -> None:
        if self._mean is not None:
            icfg_rstp = DATASET_STATISTICS[self._stats_name][2] if self._stats_name else False
            self._normalisation = ("given", self._mean, self._std, icfg_rstp)
        else:
            name = self._stats_name or dataset
            if name not in DATASET_STATISTICS:
                known = ", ".join(DATASET_STATISTICS)
                raise BenchError(
                    f"APTM normalises images with per-dataset statistics, known for {known}; for {dataset} "
                    "pass --method-arg stats=NAME (one of those) or mean=[r,g,b] std=[r,g,b]"
                )
            self._normalisation = (name, *DATASET_STATISTICS[name])
        self._tokenizer.clean = self._cleaning(self._normalisation[3])

    def _chosen(self) -> tuple[str, tuple, tuple, bool]:
        if self._normalisation is None:
            raise BenchError("aptm: the dataset is not known yet (its normalisation depends on it)")
        return self._normalisation

    def arguments(self) -> dict[str, Any]:
        return {
            **super().arguments(),
            "fusion_world_size": self.fusion_world_size,
            "stats": self._stats_name,
            "heads": self._shape.bert.heads,
        }

    def encoder_arguments(self) -> dict[str, Any]:
        return {k: v for k, v in super().encoder_arguments().items() if k != "fusion_world_size"}

    def protocol(self) -> dict[str, Any]:
        k, world = self.shortlist.k, self.fusion_world_size
        return {
            **super().protocol(),
            "rerank": f"itm top-{k} + {ITC_WEIGHT} itc, fused over {world} process{'es' if world > 1 else ''}",
            "shortlist_fill": "row minimum of the ITM logits",
            "shortlist_fill_value": None,
            "fusion_world_size": world,
        }

    def preprocessing(self) -> dict[str, Any]:
        name, mean, std, icfg_rstp = self._chosen()
        swin = self._shape.swin
        return {
            "image_size": [swin.height, swin.width],
            "resize": "bicubic (PIL)",
            "normalize": {"statistics": name, "mean": list(mean), "std": list(std)},
            "caption_cleaning": "icfg-rstp" if icfg_rstp else "words",
            "tokenizer": "bert-wordpiece-uncased, [CLS] without [SEP]",
            "vocab_sha256": self._tokenizer.sha256,
            "max_words": self._shape.max_words,
            "max_tokens": self._shape.max_tokens,
        }

    def image_transform(self):
        _, mean, std, _ = self._chosen()
        swin = self._shape.swin
        return person_image_transform((swin.height, swin.width), mean, std, interpolation="bicubic")

    def final_rows(self, scores: ShortlistScores, rows: slice, first_stage_rows: torch.Tensor) -> torch.Tensor:
        return fused_rows(scores, rows, first_stage_rows, self.fusion_world_size)


def fused_rows(scores: ShortlistScores, rows: slice, first_stage_rows: torch.Tensor, world: int) -> torch.Tensor:
    """APTM's final scores of queries ``rows``, as ``world`` processes of their evaluation compute and
    sum them (float32, in rank order). Process p handles rows [p s, (p+1) s) with s = Q // world + 1;
    its matrix holds, in its own rows, the ITM logit on the shortlist and the row's smallest logit
    elsewhere, and 1000.0 in every other row; it is min-max normalised over the whole matrix, plus
    0.002 x the ITC matrix min-max normalised. A process without rows (their code stops there) adds
    1 + 0.002 ITC, the value its rows of 1000.0 would take in any other process."""
    second = scores.second.float()
    queries = len(second)
    low, high = scores.first_stage_min, scores.first_stage_max
    itc = (first_stage_rows.float() - low) / (high - low)
    row_min = second.min(1).values
    index = scores.index[rows]
    own = row_min[rows, None].expand(len(index), scores.gallery).clone()
    own.scatter_(1, index, second[rows])
    step = queries // world + 1
    owner = torch.arange(rows.start, rows.stop) // step
    total = torch.zeros_like(own)
    for process in range(world):
        handled = slice(process * step, min(queries, (process + 1) * step))
        if handled.start >= handled.stop:
            part = torch.ones_like(own)
        else:
            smallest = second[handled].min()
            largest = second[handled].max() if handled.stop - handled.start == queries else torch.tensor(UNHANDLED)
            value = torch.where((owner == process)[:, None], own, torch.tensor(UNHANDLED))
            part = (value - smallest) / (largest - smallest)
        total += part + ITC_WEIGHT * itc
    return total
