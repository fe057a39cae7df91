"""Published numbers (``leaderboards/reported/<dataset>.toml``), each with its citation."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tbps_bench.errors import BenchError
from tbps_bench.results import METRIC_NAMES


@dataclass
class ReportedRow:
    method: str
    venue: str
    citation: str
    rerank: str
    metrics: dict[str, dict[str, float]]  # direction -> metric -> value
    reproduced_by: str | None  # the tbps-bench method name that reproduces this row
    split: str = "test"
    #: method arguments a configuration needs to reproduce this row (e.g. RDE's embedding=bge)
    reproduced_with: dict[str, object] = field(default_factory=dict)


def load_reported(folder: Path) -> dict[str, list[ReportedRow]]:
    out: dict[str, list[ReportedRow]] = {}
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BenchError(f"{path}: cannot read reported results: {exc}") from exc
        rows = []
        for index, row in enumerate(data.get("rows", [])):
            where = f"{path}: rows[{index}]"
            for key in ("method", "citation"):
                if not isinstance(row.get(key), str) or not row[key]:
                    raise BenchError(f"{where}: '{key}' is required (every number needs its source)")
            metrics = {d: row[d] for d in ("t2i", "i2t") if d in row}
            if not metrics:
                raise BenchError(f"{where}: no t2i or i2t numbers")
            for direction, values in metrics.items():
                if not isinstance(values, dict):
                    raise BenchError(f"{where}: '{direction}' must be a table of metrics, got {type(values).__name__}")
                unknown = set(values) - set(METRIC_NAMES)
                if unknown:
                    raise BenchError(f"{where}: unknown metrics {sorted(unknown)} in {direction}")
                for name, value in values.items():
                    number = isinstance(value, int | float) and not isinstance(value, bool)
                    if not number or not math.isfinite(value) or not 0 <= value <= 100:
                        raise BenchError(f"{where}: {direction}.{name} = {value!r}; expected a percentage in [0, 100]")
            for key in ("venue", "rerank", "reproduced_by", "split"):
                if key in row and not isinstance(row[key], str):
                    raise BenchError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
            if not isinstance(row.get("reproduced_with", {}), dict):
                raise BenchError(f"{where}: 'reproduced_with' must be a table of method arguments")
            rows.append(
                ReportedRow(
                    method=row["method"],
                    venue=row.get("venue", ""),
                    citation=row["citation"],
                    rerank=row.get("rerank", "none"),
                    metrics=metrics,
                    reproduced_by=row.get("reproduced_by"),
                    split=row.get("split", "test"),
                    reproduced_with=dict(row.get("reproduced_with", {})),
                )
            )
        out[path.stem] = rows
    return out
