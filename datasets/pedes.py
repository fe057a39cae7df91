"""The generic adapter for the PEDES-style JSON list (one record per image) and its splits.

Parsing is strict: every problem is one error naming the file, the record index and the key.
Parsed splits are cached as Hugging Face datasets keyed by the annotation's *content* hash (HF's
own fingerprint changes when a file is merely touched or copied), so a second load is a memory map.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir, cache_root, sha256_file, sha256_json
from tbps_bench.splits import EvalSplit
from tbps_datasets.specs import DatasetSpec

KNOWN_SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1


@dataclass
class Record:
    split: str
    file_path: str
    pid: int
    captions: list[str]
    source: str | None = None


def safe_relative_path(value: str, where: str) -> str:
    """Reject paths that are absolute or escape the image root (``../../x.jpg``)."""
    normalised = posixpath.normpath(value.replace("\\", "/"))
    if value.startswith(("/", "\\")) or posixpath.isabs(normalised) or normalised.split("/")[0] == "..":
        raise BenchError(f"{where}: image path {value!r} escapes the image folder; expected a path inside it")
    return normalised


def read_annotation(path: Path, spec: DatasetSpec) -> list[Record]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read annotation file: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(raw, list):
        raise BenchError(f"{path}: expected a JSON list of records, found {type(raw).__name__}")
    records = []
    has_split = spec.evaluation_only or any(isinstance(r, dict) and "split" in r for r in raw)
    if raw and not has_split:
        raise BenchError(
            f"{path}: records have no 'split' field (this is the split-less caption_all.json); "
            f"use the annotation file with splits ({', '.join(a for a in spec.annotation_files if a != path.name)})"
        )
    for index, record in enumerate(raw):
        where = f"{path.name}: record {index}"
        if not isinstance(record, dict):
            raise BenchError(f"{where}: expected an object, found {type(record).__name__}")
        key = next((k for k in spec.image_keys if k in record), None)
        if key is None:
            raise BenchError(f"{where}: missing key {' or '.join(repr(k) for k in spec.image_keys)}")
        if "id" not in record:
            raise BenchError(f"{where}: missing key 'id'")
        if "captions" not in record:
            raise BenchError(f"{where}: missing key 'captions'")
        split = "test" if spec.evaluation_only else record.get("split")
        if "split" not in record and not spec.evaluation_only:
            raise BenchError(f"{where}: missing key 'split'")
        if split not in KNOWN_SPLITS:
            raise BenchError(f"{where}: key 'split' is {split!r}; expected one of {', '.join(KNOWN_SPLITS)}")
        pid = record["id"]
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise BenchError(f"{where}: key 'id' must be an integer, found {type(pid).__name__}")
        captions = record["captions"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise BenchError(f"{where}: key 'captions' must be a list of strings")
        if not captions:
            raise BenchError(f"{where}: key 'captions' is empty; expected at least one caption")
        file_path = record[key]
        if not isinstance(file_path, str):
            raise BenchError(f"{where}: key '{key}' must be a string path")
        source = record.get(spec.source_key) if spec.source_key else None
        records.append(Record(split, safe_relative_path(file_path, where), pid, captions, source))
    return records


def train_label_map(pids: list[int]) -> dict[int, int]:
    """Contiguous 0-based training labels: the rank of each raw id among the sorted train ids."""
    return {pid: label for label, pid in enumerate(sorted(set(pids)))}


class PedesDataset:
    """A dataset in the PEDES JSON schema, located under ``root``."""

    def __init__(self, spec: DatasetSpec, root: str | Path | None = None):
        self.spec = spec
        if root is None and spec.generator:
            from tbps_bench.registry import resolve

            root = resolve(spec.generator)()
        if root is None:
            raise BenchError(
                f"dataset '{spec.name}' needs --data-root: the folder holding {spec.image_dir}/ and one of "
                f"{', '.join(spec.annotation_files)} (or its parent holding {spec.folder}/); access: {spec.access}"
            )
        self.root, self.annotation = self._locate(Path(root))
        self.image_root = self.root / spec.image_dir

    def _locate(self, root: Path) -> tuple[Path, Path]:
        if not root.exists():
            raise BenchError(f"dataset root {root} does not exist (dataset '{self.spec.name}')")
        tried = []
        for folder in (root, root / self.spec.folder):
            for name in self.spec.annotation_files:
                candidate = folder / name
                tried.append(str(candidate))
                if candidate.is_file():
                    return folder, candidate
        raise BenchError(f"no annotation file for '{self.spec.name}' under {root}: tried {', '.join(tried)}")

    # ---------------------------------------------------------------- parsing and caching
    def records(self) -> list[Record]:
        return read_annotation(self.annotation, self.spec)

    def annotation_sha256(self) -> str:
        if not hasattr(self, "_sha"):
            self._sha = sha256_file(self.annotation)
        return self._sha

    def _cache_dir(self) -> Path:
        key = sha256_json(
            {
                "v": _CACHE_VERSION,
                "annotation": self.annotation_sha256(),
                "image_root": str(self.image_root.resolve()),
                "spec": self.spec.name,
            }
        )
        return cache_root() / "datasets" / self.spec.name / key[:32]

    def hf_splits(self):
        """Per-split Hugging Face datasets (Arrow-backed; the ``image`` column decodes lazily)."""
        import sys

        import datasets as hf

        if not sys.stderr.isatty():
            hf.disable_progress_bars()
        cache = self._cache_dir()
        if (cache / "dataset_dict.json").is_file():
            return self._with_lazy_images(hf.load_from_disk(str(cache)))
        records = self.records()
        labels = train_label_map([r.pid for r in records if r.split == "train"])
        columns: dict[str, dict[str, list[Any]]] = {}
        for record in records:
            table = columns.setdefault(
                record.split,
                {"image": [], "file_path": [], "pid": [], "label": [], "captions": [], "source": []},
            )
            table["image"].append(str(self.image_root / record.file_path))
            table["file_path"].append(record.file_path)
            table["pid"].append(record.pid)
            table["label"].append(labels.get(record.pid, -1) if record.split == "train" else -1)
            table["captions"].append(record.captions)
            table["source"].append(record.source or "")
        features = hf.Features(
            {
                "image": hf.Value("string"),
                "file_path": hf.Value("string"),
                "pid": hf.Value("int64"),
                "label": hf.Value("int64"),
                "captions": hf.Sequence(hf.Value("string")),
                "source": hf.Value("string"),
            }
        )
        splits = hf.DatasetDict(
            {name: hf.Dataset.from_dict(table, features=features) for name, table in sorted(columns.items())}
        )
        with atomic_dir(cache) as tmp:
            splits.save_to_disk(str(tmp))
        return self._with_lazy_images(hf.load_from_disk(str(cache)))

    @staticmethod
    def _with_lazy_images(splits):
        """Paths are stored as strings (a missing file must not break loading); decode on access."""
        import datasets as hf

        return hf.DatasetDict({name: table.cast_column("image", hf.Image()) for name, table in splits.items()})

    # ---------------------------------------------------------------- views
    def eval_split(self, split: str = "test") -> EvalSplit:
        splits = self.hf_splits()
        if split not in splits:
            raise BenchError(f"dataset '{self.spec.name}' has no '{split}' split (it has {', '.join(sorted(splits))})")
        table = splits[split].select_columns(["file_path", "pid", "captions", "source"]).to_dict()
        captions, caption_pids, caption_image = [], [], []
        for index, (pid, texts) in enumerate(zip(table["pid"], table["captions"], strict=True)):
            captions.extend(texts)
            caption_pids.extend([pid] * len(texts))
            caption_image.extend([index] * len(texts))
        sources = table["source"] if any(table["source"]) else None
        return EvalSplit(
            dataset=self.spec.name,
            split=split,
            image_root=self.image_root,
            image_paths=table["file_path"],
            image_pids=torch.tensor(table["pid"], dtype=torch.int64),
            captions=captions,
            caption_pids=torch.tensor(caption_pids, dtype=torch.int64),
            caption_image=torch.tensor(caption_image, dtype=torch.int64),
            annotation_sha256=self.annotation_sha256(),
            image_sources=sources,
        )

    def subsets(self, split: EvalSplit) -> list[EvalSplit]:
        """A dataset with per-image sources (UFine3C) is also evaluated per source: each source's
        images as the gallery, their captions as the queries (split ``test/<source>``)."""
        if not split.image_sources:
            return []
        parts = []
        for source in sorted(set(split.image_sources)):
            keep = torch.tensor([s == source for s in split.image_sources])
            parts.append(split.subset_images(keep, source))
        return parts

    def check(self, quick: bool = False, workers: int = 1):
        """``data check``: every finding about this copy (``tbps_datasets.check.Report``)."""
        from tbps_datasets.check import check_dataset

        return check_dataset(self, quick=quick, workers=workers)

    def split_statistics(self) -> dict[str, dict[str, float]]:
        stats = {}
        for name, table in sorted(self.hf_splits().items()):
            data = table.select_columns(["pid", "captions"]).to_dict()
            lengths = [len(c.split()) for caps in data["captions"] for c in caps]
            stats[name] = {
                "ids": len(set(data["pid"])),
                "images": len(data["pid"]),
                "captions": len(lengths),
                "words_mean": sum(lengths) / max(len(lengths), 1),
                "words_min": min(lengths, default=0),
                "words_max": max(lengths, default=0),
            }
        return stats
