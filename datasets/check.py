"""``data check``: compare a dataset copy with its spec; every finding is one line.

Errors make the copy unusable or different from the published one (missing images, wrong counts);
notes describe known quirks that are kept as published (junk or reused captions, grayscale images,
a record listed twice).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tbps_bench.errors import BenchError

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


def check_dataset(dataset) -> Report:
    from PIL import Image, UnidentifiedImageError

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

    missing, unreadable, grayscale = [], [], []
    for path in sorted({r.file_path for r in records}):
        full = dataset.image_root / path
        if not full.is_file():
            missing.append(path)
            continue
        try:
            with Image.open(full) as image:
                if image.mode in ("L", "LA", "1", "I", "I;16"):
                    grayscale.append(path)
        except (OSError, UnidentifiedImageError):
            unreadable.append(path)
    if missing:
        report.errors.append(f"{len(missing)} referenced images are missing: {_examples(missing)}")
    if unreadable:
        report.errors.append(f"{len(unreadable)} images are unreadable: {_examples(unreadable)}")
    if grayscale:
        report.notes.append(
            f"{len(grayscale)} images are grayscale (converted to RGB when loaded): {_examples(grayscale)}"
        )
    return report
