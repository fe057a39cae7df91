"""``data check``: compare a dataset copy with its spec; every finding is one line.

Errors make the copy unusable or different from the published one (missing images, wrong counts);
notes describe known quirks that are kept as published (junk or reused captions, grayscale images,
a record listed twice).
"""

from __future__ import annotations

import multiprocessing
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbps_bench.errors import BenchError
from tbps_bench.images import GRAYSCALE_MODES, integer_depth

_EXAMPLES = 3
_CODE_LIKE = re.compile(r"[{}<>;=\\]|\bdef\b|\breturn\b|https?://")


@dataclass
class Report:
    dataset: str
    root: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        lines = [f"error: {e}" for e in self.errors] + [f"note: {n}" for n in self.notes]
        verdict = "matches its spec" if self.ok else f"does NOT match its spec ({len(self.errors)} errors)"
        return [*lines, f"{self.dataset} at {self.root}: {verdict}"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "ok": self.ok,
            "errors": self.errors,
            "notes": self.notes,
            "counts": self.counts,
        }


def _examples(paths: list[str]) -> str:
    shown = ", ".join(paths[:_EXAMPLES])
    return shown + (", ..." if len(paths) > _EXAMPLES else "")


def is_junk(caption: str) -> bool:
    """Mostly non-Latin text, code fragments, or no letters at all."""
    letters = [c for c in caption if c.isalpha()]
    if not letters:
        return True
    non_latin = sum(1 for c in letters if not c.isascii())
    return non_latin / len(letters) > 0.3 or bool(_CODE_LIKE.search(caption))


def check_dataset(dataset, quick: bool = False, workers: int = 1) -> Report:
    """Every finding about a dataset copy. Images are decoded in full (``quick``: headers only) by
    ``workers`` processes."""
    spec = dataset.spec
    report = Report(dataset=spec.name, root=dataset.root.name)
    if not dataset.image_root.is_dir():
        report.errors.append(f"image folder {spec.image_dir}/ is missing under {dataset.root.name}/")
    try:
        records = dataset.records()
    except BenchError as exc:
        report.errors.append(str(exc))
        return report

    per_split: dict[str, dict[str, Any]] = defaultdict(lambda: {"ids": set(), "images": 0, "captions": 0})
    for record in records:
        stats = per_split[record.split]
        stats["ids"].add(record.pid)
        stats["images"] += 1
        stats["captions"] += len(record.captions)
    report.counts = {
        s: {"ids": len(v["ids"]), "images": v["images"], "captions": v["captions"]}
        for s, v in sorted(per_split.items())
    }

    for split, expected in sorted(spec.splits.items()):
        found = report.counts.get(split, {"ids": 0, "images": 0, "captions": 0})
        for what in ("ids", "images", "captions"):
            if found[what] != getattr(expected, what):
                report.errors.append(f"split '{split}': expected {getattr(expected, what)} {what}, found {found[what]}")
    for split in sorted(set(report.counts) - set(spec.splits)):
        if spec.splits:
            report.errors.append(f"split '{split}' is not in the spec (expected {', '.join(sorted(spec.splits))})")
    if spec.total is not None:
        for what in ("ids", "images", "captions"):
            found_total = (
                len(set().union(*(v["ids"] for v in per_split.values())))
                if what == "ids"
                else sum(v[what] for v in per_split.values())
            )
            if found_total != getattr(spec.total, what):
                report.errors.append(f"all splits: expected {getattr(spec.total, what)} {what}, found {found_total}")

    for split, stats in sorted(per_split.items()):
        ids = stats["ids"]
        report.notes.append(f"split '{split}': person ids {min(ids)}..{max(ids)}")
    splits = sorted(per_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = per_split[a]["ids"] & per_split[b]["ids"]
            if shared:
                report.errors.append(f"splits '{a}' and '{b}' share {len(shared)} person ids (e.g. {min(shared)})")

    duplicates = [p for p, n in Counter(r.file_path for r in records).items() if n > 1]
    if duplicates:
        report.notes.append(f"{len(duplicates)} images are listed by more than one record: {_examples(duplicates)}")

    owners: dict[str, set[int]] = defaultdict(set)
    junk = []
    for record in records:
        for caption in record.captions:
            owners[caption.strip().lower()].add(record.pid)
            if is_junk(caption):
                junk.append(caption[:40])
    if junk:
        report.notes.append(f"{len(junk)} captions look like junk (kept as published): {_examples(junk)}")
    reused = [c for c, pids in owners.items() if len(pids) > 1]
    if reused:
        report.notes.append(f"{len(reused)} captions are reused for different person ids (kept as published)")
    many = sum(1 for r in records if len(r.captions) > 2)
    if many:
        report.notes.append(f"{many} images have more than 2 captions (all kept)")

    paths = sorted({r.file_path for r in records})
    found: dict[str, list[str]] = defaultdict(list)
    for path, status in _inspect_images(dataset.image_root, paths, quick, workers):
        found[status].append(path)
    if found["missing"]:
        report.errors.append(f"{len(found['missing'])} referenced images are missing: {_examples(found['missing'])}")
    if found["unreadable"]:
        what = "unreadable (header)" if quick else "undecodable or truncated"
        report.errors.append(f"{len(found['unreadable'])} images are {what}: {_examples(found['unreadable'])}")
    if found["grayscale"]:
        report.notes.append(
            f"{len(found['grayscale'])} images are grayscale (converted to RGB when loaded): "
            f"{_examples(found['grayscale'])}"
        )
    for status in sorted(s for s in found if s.endswith("-bit")):
        report.notes.append(
            f"{len(found[status])} images are {status} integer grayscale (scaled to 8 bits by their depth's "
            f"range, then RGB, when loaded): {_examples(found[status])}"
        )
    report.notes.append(
        f"{len(paths)} images {'opened (headers only, --quick)' if quick else 'decoded in full'} "
        f"with {max(workers, 1)} process(es)"
    )
    return report


def _inspect_image(task: tuple[Path, str, bool]) -> tuple[str, str]:
    """(path, status): ok, missing, unreadable, grayscale, or an integer depth ("16-bit", "32-bit").
    Decoding every pixel is what finds a truncated JPEG: its header alone reads fine."""
    from PIL import Image, UnidentifiedImageError

    root, path, quick = task
    full = root / path
    if not full.is_file():
        return path, "missing"
    try:
        with Image.open(full) as image:
            if not quick:
                image.load()
            mode = image.mode
            depth = integer_depth(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return path, "unreadable"  # a decompression bomb (too many pixels to decode safely) included
    if depth is not None:
        return path, f"{depth[0]}-bit"
    return path, "grayscale" if mode in GRAYSCALE_MODES else "ok"


def _inspect_images(root: Path, paths: list[str], quick: bool, workers: int) -> Iterator[tuple[str, str]]:
    from tqdm.auto import tqdm

    tasks = [(root, path, quick) for path in paths]
    bar = {"total": len(tasks), "desc": "images", "unit": "img", "disable": not sys.stderr.isatty()}
    if workers <= 1:
        yield from tqdm(map(_inspect_image, tasks), **bar)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from tqdm(pool.imap_unordered(_inspect_image, tasks, chunksize=64), **bar)
