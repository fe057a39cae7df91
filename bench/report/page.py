"""``tbps-bench report``: one static HTML page (and its thumbnails) for one result, or two of the
same dataset side by side. No server, no network: the page, its script and its data are one file,
the thumbnails sit beside it, and it opens from ``file://``."""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import torch

from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_dir, sha256_file
from tbps_bench.metrics import cmc_curve, recall_at_1_interval
from tbps_bench.rankings import DIRECTIONS, NO_ITEM, ranked_items, read_rankings
from tbps_bench.results import load_result

#: a report folder holds this file; only such a folder is ever replaced
MARKER = ".tbps-report"
THUMBNAIL_SIZE = (48, 96)  # width x height, a person's proportions
CMC_RANKS = 20
COLOURS = ("#1f6feb", "#d4750b")


@dataclass(frozen=True)
class ReportRun:
    label: str
    path: Path
    result: dict[str, Any]
    rankings: dict[str, np.ndarray]


def load_run(path: str | Path) -> ReportRun:
    """A result file and the rankings file it names (its sha256 checked)."""
    path = Path(path)
    result = load_result(path)
    named = result.get("rankings")
    if not isinstance(named, dict) or not isinstance(named.get("file"), str):
        raise BenchError(f"{path}: the result has no rankings; run eval with --save-rankings K")
    file = path.parent / Path(named["file"]).name  # beside the result, whatever the field says
    if not file.is_file():
        raise BenchError(f"{path}: its rankings file {file} is missing")
    if sha256_file(file) != named.get("sha256"):
        raise BenchError(f"{file}: sha256 differs from the one {path} records; the file was changed or replaced")
    arguments = result["method"].get("arguments") or {}
    label = result["method"]["name"] + (f":{arguments['label']}" if "label" in arguments else "")
    return ReportRun(label, path, result, read_rankings(file))


def _same_dataset(runs: list[ReportRun]) -> None:
    if len(runs) < 2:
        return
    first, second = (run.result["dataset"] for run in runs[:2])
    for key in ("name", "split", "annotation_sha256", "counts"):
        if first.get(key) != second.get(key):
            raise BenchError(
                f"{runs[0].path} and {runs[1].path} are not of the same dataset ({key}: {first.get(key)!r} vs "
                f"{second.get(key)!r}); a comparison needs the same queries"
            )
    for name in ("image_files", "captions"):
        if not np.array_equal(runs[0].rankings[name], runs[1].rankings[name]):
            raise BenchError(f"{runs[0].path} and {runs[1].path} rank other items ({name} differ)")


def _cmc_svg(direction: str, runs: list[ReportRun]) -> str:
    """The CMC curves of one direction as an inline SVG (deterministic text)."""
    width, height, left, bottom = 320, 200, 36, 24
    plot_w, plot_h = width - left - 8, height - bottom - 8
    parts = [
        f'<svg class="cmc" data-direction="{direction}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="CMC {direction}">',
        f'<text x="{left}" y="12" font-size="12">CMC {direction} (rank 1-{CMC_RANKS})</text>',
        f'<line x1="{left}" y1="{8 + plot_h}" x2="{left + plot_w}" y2="{8 + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="8" x2="{left}" y2="{8 + plot_h}" stroke="#888"/>',
    ]
    for value in (0, 50, 100):
        y = 8 + plot_h * (1 - value / 100)
        parts.append(f'<text x="2" y="{y + 4:.1f}" font-size="10">{value}</text>')
    for index, run in enumerate(runs):
        curve = cmc_curve(torch.tensor(run.result["per_query"][f"{direction}_first_hit_rank"]), CMC_RANKS)
        points = " ".join(
            f"{left + plot_w * k / (CMC_RANKS - 1):.1f},{8 + plot_h * (1 - value / 100):.1f}"
            for k, value in enumerate(curve)
        )
        colour = COLOURS[index % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts.append(
            f'<text x="{left + 6}" y="{8 + plot_h - 8 - 12 * index}" font-size="10" fill="{colour}">'
            f"{html.escape(run.label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _metrics_table(runs: list[ReportRun]) -> str:
    header = ("run", "direction", "R@1 (95 % CI)", "R@5", "R@10", "mAP", "mINP")
    rows = ["<tr>" + "".join(f"<th>{name}</th>" for name in header) + "</tr>"]
    for run in runs:
        for direction in DIRECTIONS:
            metrics = run.result["metrics"][direction]
            low, high = recall_at_1_interval([run.result["per_query"][f"{direction}_first_hit_rank"]])
            cells = [
                html.escape(run.label),
                direction,
                f"{metrics['R1']:.2f} ({low:.2f}-{high:.2f})",
                *(f"{metrics[name]:.2f}" for name in ("R5", "R10", "mAP", "mINP")),
            ]
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return '<table class="metrics">' + "".join(rows) + "</table>"


def _thumbnails(files: list[str], image_root: Path | None, out: Path) -> tuple[list[str], int]:
    """One small JPEG per distinct image file (named by a hash of its path), or a grey placeholder
    for a file that cannot be read; the page's paths, and how many were missing."""
    from PIL import Image

    from tbps_bench.images import to_rgb

    folder = out / "thumbs"
    folder.mkdir()
    placeholder = folder / "missing.png"
    Image.new("RGB", THUMBNAIL_SIZE, (200, 200, 200)).save(placeholder)
    paths, made, missing = [], {}, 0
    for name in files:
        if name not in made:
            target = f"thumbs/{hashlib.sha256(name.encode()).hexdigest()[:20]}.jpg"
            source = (image_root / name) if image_root is not None else None
            try:
                if source is None or ".." in Path(name).parts or Path(name).is_absolute():
                    raise OSError("not under the image folder")
                with Image.open(source) as image:
                    thumbnail = to_rgb(image).resize(THUMBNAIL_SIZE)
                thumbnail.save(out / target, quality=85)
            except (OSError, ValueError, Image.DecompressionBombError):
                target, missing = "thumbs/missing.png", missing + 1
            made[name] = target
        paths.append(made[name])
    return paths, missing


def _top(rankings: dict[str, np.ndarray], direction: str) -> list[list[list[float]]]:
    index, score = rankings[f"{direction}_index"], rankings[f"{direction}_score"]
    return [
        [[int(i), round(float(s), 4)] for i, s in zip(row_index, row_score, strict=True) if i != NO_ITEM]
        for row_index, row_score in zip(index, score, strict=True)
    ]


def _script_json(value: Any) -> str:
    """JSON that cannot end its ``<script>`` element or open markup (``<`` ``>`` ``&`` escaped)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def _asset(name: str) -> str:
    return resources.files("tbps_bench.report").joinpath("assets", name).read_text(encoding="utf-8")


def write_report(paths: list[str | Path], out: str | Path, data_root: str | Path | None = None) -> Path:
    """The report folder ``out`` (``index.html`` + ``thumbs/``) for one or two result files."""
    runs = [load_run(path) for path in paths]
    _same_dataset(runs)
    rankings = runs[0].rankings
    stored_root = str(rankings["image_root"]) if "image_root" in rankings else ""
    image_root = Path(data_root) if data_root is not None else (Path(stored_root) if stored_root else None)
    dataset = runs[0].result["dataset"]
    title = " vs ".join(run.label for run in runs) + f" @ {dataset['name']}/{dataset.get('split', 'test')}"
    sections = _metrics_table(runs) + '<div class="plots">' + "".join(_cmc_svg(d, runs) for d in DIRECTIONS)
    ranked = [
        {
            "label": run.label,
            "first_hit": {d: _first_hits(run, d) for d in DIRECTIONS},
            "top": {d: _top(run.rankings, d) for d in DIRECTIONS},
        }
        for run in runs
    ]
    return _write_page(Path(out), title, sections + "</div>", rankings, ranked, image_root, marks=True, direction="t2i")


def write_search_sheet(method: str, split, rankings, direction: str, out: Path) -> Path:
    """The contact sheet of a ``tbps-bench search``: the same page, without metrics or match marks."""
    items, arrays = ranked_items(split), rankings.arrays()  # every item of a search shares one id
    ranked = [
        {
            "label": method,
            "first_hit": {d: [1] * len(arrays[f"{d}_index"]) for d in DIRECTIONS},
            "top": {d: _top(arrays, d) for d in DIRECTIONS},
        }
    ]
    title = f"{method}: search over {split.image_root}"
    return _write_page(out, title, "", items, ranked, Path(split.image_root), marks=False, direction=direction)


def _write_page(
    out: Path,
    title: str,
    sections: str,
    items: dict[str, np.ndarray],
    ranked: list[dict[str, Any]],
    image_root: Path | None,
    marks: bool,
    direction: str,
) -> Path:
    if out.exists() and not (out / MARKER).is_file():
        raise BenchError(f"{out} exists and is not a report folder written by tbps-bench; choose another --out")
    with atomic_dir(out) as tmp:
        thumbs, missing = _thumbnails([str(name) for name in items["image_files"]], image_root, tmp)
        data = {
            "marks": marks,
            "direction": direction,
            "captions": [str(c) for c in items["captions"]],
            "image_files": [str(f) for f in items["image_files"]],
            "caption_ids": [int(i) for i in items["caption_ids"]],
            "image_ids": [int(i) for i in items["image_ids"]],
            "thumbs": thumbs,
            "runs": ranked,
        }
        note = f"<p>{missing} images could not be read (shown grey): pass --data-root.</p>" if missing else ""
        page = Template(_asset("report.html")).substitute(
            title=html.escape(title),
            css=_asset("report.css"),
            sections=sections,
            note=note,
            data=_script_json(data),
            script=_asset("report.js"),
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / MARKER).write_text("written by tbps-bench\n", encoding="utf-8")
    return out / "index.html"


def _first_hits(run: ReportRun, direction: str) -> list[int]:
    """Each query's first-hit rank, in query order; a result that skipped queries without a positive
    is refused (its ranks no longer line up with the ranked queries)."""
    ranks = run.result["per_query"][f"{direction}_first_hit_rank"]
    queries = len(run.rankings[f"{direction}_index"])
    if len(ranks) != queries:
        raise BenchError(
            f"{run.path}: {len(ranks)} {direction} first-hit ranks for {queries} ranked queries (queries without a "
            "positive were skipped); a report needs every query ranked"
        )
    return [int(r) for r in ranks]
