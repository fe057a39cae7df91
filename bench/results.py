"""Result files: one strict-JSON document per (method, dataset, run), written atomically."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any

from tbps_bench.errors import BenchError
from tbps_bench.fileio import write_json_atomic
from tbps_bench.metrics import RetrievalResult

#: 2: per-query average precision and INP beside the first-hit ranks, so every metric can be re-derived
SCHEMA_VERSION = 2
METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")
#: per-query fields of a result file -> DirectionResult attributes
PER_QUERY_FIELDS = {
    "first_hit_rank": "first_hit_rank",
    "average_precision": "average_precision",
    "inverse_negative_penalty": "inverse_negative_penalty",
}
#: recomputed metrics must match the stored ones this closely (percent)
CONSISTENCY_TOLERANCE = 1e-6
_QUERIES = {"t2i": "captions", "i2t": "images"}
_GALLERY = {"t2i": "images", "i2t": "captions"}
_REQUIRED = {
    "schema_version": int,
    "run_id": str,
    "status": str,
    "method": dict,
    "dataset": dict,
    "protocol": dict,
    "metrics": dict,
    "timings": dict,
    "provenance": dict,
}


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def build_result(
    *,
    run_id: str,
    method: dict[str, Any],
    dataset: dict[str, Any],
    retrieval: RetrievalResult,
    scoring: str,
    timings: dict[str, Any],
    provenance: dict[str, Any],
    partial: bool,
    protocol_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    protocol = {
        "directions": ["t2i", "i2t"],
        "ks": list(retrieval.t2i.ks),
        "tie_policy": retrieval.tie_policy,
        "scoring": scoring,
        "queries_without_positives_skipped": {
            "t2i": retrieval.t2i.skipped_queries,
            "i2t": retrieval.i2t.skipped_queries,
        },
    }
    protocol.update(protocol_extra or {})
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "partial" if partial else "complete",
        "method": method,
        "dataset": dataset,
        "protocol": protocol,
        "metrics": retrieval.summary(),
        "per_query": {
            f"{name}_{field}": getattr(getattr(retrieval, name), attribute).tolist()
            for name in ("t2i", "i2t")
            for field, attribute in PER_QUERY_FIELDS.items()
        },
        "timings": timings,
        "provenance": provenance,
    }


def result_path(out_dir: str | Path, result: dict[str, Any]) -> Path:
    split = result["dataset"].get("split", "test").replace("/", "-")
    return Path(out_dir) / result["dataset"]["name"] / result["method"]["name"] / f"{result['run_id']}_{split}.json"


def write_result(out_dir: str | Path, result: dict[str, Any]) -> Path:
    validate_result(result, source="new result")
    path = result_path(out_dir, result)
    write_json_atomic(path, result)
    return path


def validate_result(result: Any, source: str) -> None:
    """Raise BenchError naming the first offending field."""
    if not isinstance(result, dict):
        raise BenchError(f"{source}: a result file must hold a JSON object")
    for key, kind in _REQUIRED.items():
        if key not in result:
            raise BenchError(f"{source}: missing field '{key}'")
        if not isinstance(result[key], kind):
            raise BenchError(f"{source}: field '{key}' must be {kind.__name__}")
    if result["schema_version"] != SCHEMA_VERSION:
        raise BenchError(
            f"{source}: field 'schema_version' is {result['schema_version']}, this version reads {SCHEMA_VERSION}"
        )
    if result["status"] not in ("complete", "partial"):
        raise BenchError(f"{source}: field 'status' must be 'complete' or 'partial', got {result['status']!r}")
    for key in ("name",):
        for section in ("method", "dataset"):
            if not isinstance(result[section].get(key), str):
                raise BenchError(f"{source}: field '{section}.{key}' must be a string")
    for direction in ("t2i", "i2t"):
        values = result["metrics"].get(direction)
        if not isinstance(values, dict):
            raise BenchError(f"{source}: field 'metrics.{direction}' is missing")
        for name in METRIC_NAMES:
            value = values.get(name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 100:
                raise BenchError(f"{source}: field 'metrics.{direction}.{name}' must be a percentage, got {value!r}")
    _check_per_query(result, source)


#: ranks beyond this cannot be told apart as floats (and no gallery is that large)
LARGEST_RANK = 2**53


def _per_query_list(
    per_query: dict[str, Any], key: str, source: str, count: int | None, ranks: bool, gallery: int | None = None
) -> list:
    values = per_query.get(key)
    where = f"{source}: field 'per_query.{key}'"
    if not isinstance(values, list) or not values:
        raise BenchError(f"{where} is missing or empty")
    if count is not None and len(values) != count:
        raise BenchError(f"{where} has {len(values)} queries; the result counts {count}")
    if ranks:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise BenchError(f"{where} must hold integer ranks >= 1")
        largest = gallery if gallery is not None else LARGEST_RANK
        if max(values) > largest:
            what = f"the gallery's {gallery} items" if gallery is not None else f"{LARGEST_RANK}"
            raise BenchError(f"{where} holds a rank of {len(str(max(values)))} digits, beyond {what}")
    elif not all(isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise BenchError(f"{where} must hold values in [0, 1]")
    return values


def _check_per_query(result: dict[str, Any], source: str) -> None:
    """The per-query outcomes must give back every stored metric: a file whose ranks contradict its
    numbers (or hold the wrong number of queries) is refused, naming the field."""
    per_query = result.get("per_query")
    if not isinstance(per_query, dict):
        raise BenchError(f"{source}: field 'per_query' is missing")
    counts = result["dataset"].get("counts") or {}
    skipped = result["protocol"].get("queries_without_positives_skipped") or {}
    ks = result["protocol"].get("ks") or [1, 5, 10]
    for direction, queries in _QUERIES.items():
        count = counts.get(queries)
        count = count - int(skipped.get(direction) or 0) if isinstance(count, int) else None
        gallery = counts.get(_GALLERY[direction])
        gallery = gallery if isinstance(gallery, int) and not isinstance(gallery, bool) and gallery > 0 else None
        ranks = _per_query_list(per_query, f"{direction}_first_hit_rank", source, count, ranks=True, gallery=gallery)
        n = len(ranks)
        # every R@K the file carries, and R@1, R@5, R@10 whatever ``ks`` says (a leaderboard shows them)
        carried = {int(name[1:]) for name in result["metrics"][direction] if re.fullmatch(r"R[1-9][0-9]*", name)}
        derived = {f"R{k}": 100.0 * sum(1 for r in ranks if r <= k) / n for k in sorted({1, 5, 10, *ks, *carried})}
        for name, field in (("mAP", "average_precision"), ("mINP", "inverse_negative_penalty")):
            values = _per_query_list(per_query, f"{direction}_{field}", source, n, ranks=False)
            derived[name] = 100.0 * math.fsum(values) / n
        for name, value in derived.items():
            stored = result["metrics"][direction].get(name)
            if stored is None or abs(stored - value) > CONSISTENCY_TOLERANCE:
                raise BenchError(
                    f"{source}: field 'per_query.{direction}_*' gives {name} = {value:.6f} but "
                    f"'metrics.{direction}.{name}' is {stored}; the file contradicts itself"
                )


def load_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read result file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    validate_result(result, source=str(path))
    return result
