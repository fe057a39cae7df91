"""Result files grouped into configurations: one row per configuration, several runs (seeds) each."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tbps_bench.errors import BenchError
from tbps_bench.fileio import sha256_json
from tbps_bench.metrics import cmc_curve, recall_at_1_interval
from tbps_bench.results import METRIC_NAMES, load_result

#: arguments that distinguish runs of one configuration rather than configurations
RUN_ARGUMENTS = {"seed"}
#: what a dataset or split name read from a result file must look like to become part of a file name
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass
class Configuration:
    """Every run of one (method, arguments, weights, protocol) on one dataset split.

    Weights are the checkpoint for a downloaded model, and the training configuration for one trained
    here: the checkpoints of several training seeds are runs of one configuration."""

    dataset: str
    split: str
    method: str
    label: str
    trained_on: str | None
    selected_on: str | None
    rerank: str
    tie_policy: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    #: the runs' result files, in the order of ``runs``
    paths: list[str] = field(default_factory=list)

    @property
    def domain(self) -> str:
        """``in-domain``, ``cross-domain`` (trained on another dataset), or ``unlabelled``: external
        weights whose training data nobody named (``trained_on=``), never shown as in-domain."""
        if self.trained_on is not None:
            return "in-domain" if self.trained_on == self.dataset else "cross-domain"
        run = self.runs[0]["method"] if self.runs else {}
        external = run.get("checkpoint") is not None and not run.get("training")
        return "unlabelled" if external else "in-domain"

    def rerank_in(self, direction: str) -> str:
        """The re-ranking column of one direction's table: a direction the method's authors do not
        evaluate (a shortlist with the roles swapped) says so."""
        protocol = self.runs[0]["protocol"] if self.runs else {}
        authors = protocol.get("authors_directions")
        if authors is not None and direction not in authors:
            return f"{self.rerank} (roles swapped; not in the authors' evaluation)"
        return self.rerank

    @property
    def dirty(self) -> bool:
        return any(run["provenance"].get("git", {}).get("dirty") for run in self.runs)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """One row per run, one column per (direction, metric)."""

        def row(run: dict[str, Any]) -> dict[tuple[str, str], float]:
            return {(d, name): float(value) for d in ("t2i", "i2t") for name, value in run["metrics"][d].items()}

        return pd.DataFrame([row(run) for run in self.runs])

    def metric(self, direction: str, name: str) -> tuple[float, float | None]:
        """Mean over runs and the sample standard deviation (None for a single run)."""
        values = self.metrics[(direction, name)]
        return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)

    def cmc(self, direction: str, max_rank: int = 20) -> list[float]:
        ranks = torch.cat([torch.tensor(run["per_query"][f"{direction}_first_hit_rank"]) for run in self.runs])
        return cmc_curve(ranks, max_rank)

    def recall_at_1_interval(self, direction: str) -> tuple[float, float]:
        """95 % bootstrap interval of R@1, resampling queries (jointly across runs)."""
        return recall_at_1_interval([run["per_query"][f"{direction}_first_hit_rank"] for run in self.runs])

    def checkpoints(self) -> list[str]:
        """Short hashes of the runs' checkpoints (several when training seeds differ)."""
        hashes = {((run["method"].get("checkpoint") or {}).get("sha256") or "")[:8] for run in self.runs}
        return sorted(h for h in hashes if h)

    def versions(self) -> str:
        """tbps-bench version and short commit(s) of the runs."""
        seen = set()
        for run in self.runs:
            commit = (run["provenance"].get("git", {}).get("commit") or "?")[:7]
            seen.add(f"{run['provenance'].get('package_version', '?')}@{commit}")
        return ", ".join(sorted(seen))


def _configuration_key(result: dict[str, Any]) -> tuple:
    method = result["method"]
    arguments = {k: v for k, v in (method.get("arguments") or {}).items() if k not in RUN_ARGUMENTS}
    training = method.get("training")
    if training:
        # seeds and the epoch the selection picked vary between runs of one training configuration
        weights = sha256_json({k: v for k, v in training.items() if k not in ("seed", "epoch")})
    else:
        weights = (method.get("checkpoint") or {}).get("sha256") or ""
    protocol = result["protocol"]
    extra = {k: protocol.get(k) for k in ("rerank", "shortlist_k", "score_dtype", "amp")}
    return (
        result["dataset"]["name"],
        result["dataset"]["split"],
        method["name"],
        repr(sorted(arguments.items())),
        weights,
        method.get("trained_on"),
        repr(sorted(extra.items())),
        protocol.get("tie_policy"),
        result["dataset"].get("annotation_sha256"),  # runs on another copy of the dataset are not pooled
    )


def _label(result: dict[str, Any]) -> str:
    method = result["method"]
    arguments = method.get("arguments") or {}
    # protocol choices have their own columns or suffixes; file identity is the label
    hidden = RUN_ARGUMENTS | {"file", "sha256", "label", "rerank", "rerank_k", "shortlist", "score_dtype"}
    shown = [f"{k}={v}" for k, v in sorted(arguments.items()) if k not in hidden]
    name = f"{method['name']}:{arguments['label']}" if "label" in arguments else method["name"]
    protocol = result["protocol"]
    for key in ("shortlist_k", "score_dtype"):
        if protocol.get(key) not in (None, "fp32"):
            shown.append(f"{key}={protocol[key]}")
    return f"{name} ({', '.join(shown)})" if shown else name


def _unsafe_name(result: dict[str, Any]) -> str | None:
    """The dataset or split name of a result file that cannot be part of a file name (a path, ``..``)."""
    for key in ("name", "split"):
        value = result["dataset"][key]
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
            return f"dataset.{key} {value!r}"
    return None


def _check_same_queries(group: pd.DataFrame) -> None:
    """Runs pooled into one row must rank the same queries: one line naming two that do not."""
    counts = [
        tuple(len(result["per_query"][f"{d}_first_hit_rank"]) for d in ("t2i", "i2t")) for result in group["result"]
    ]
    for index, count in enumerate(counts):
        if count != counts[0]:
            raise BenchError(
                f"{group['path'].iloc[0]} and {group['path'].iloc[index]}: runs of one configuration rank "
                f"{counts[0][0]} / {counts[0][1]} and {count[0]} / {count[1]} queries (t2i / i2t); expected the "
                "same split (move one of them out of --results)"
            )


def load_runs(results_dir: Path, skip_invalid: bool) -> tuple[list[Configuration], dict[str, int]]:
    """Complete runs grouped by configuration, and counts of what was left out."""
    files = sorted(p for p in results_dir.rglob("*.json") if p.is_file()) if results_dir.is_dir() else []
    left_out = {"partial": 0, "invalid": 0, "duplicate": 0}
    complete: list[dict[str, Any]] = []
    for path in files:
        try:
            result = load_result(path)  # validates per_query against the metrics
        except BenchError as exc:
            if not skip_invalid:
                raise BenchError(f"{exc} (use --skip-invalid to build without it)") from exc
            print(f"skipped: {exc}", file=sys.stderr)
            left_out["invalid"] += 1
            continue
        unsafe = _unsafe_name(result)
        if unsafe:
            message = f"{path}: {unsafe} cannot name a leaderboard file; expected {SAFE_NAME.pattern}"
            if not skip_invalid:
                raise BenchError(f"{message} (use --skip-invalid to build without it)")
            print(f"skipped: {message}", file=sys.stderr)
            left_out["invalid"] += 1
            continue
        if result["status"] != "complete" or result["dataset"].get("limit") is not None:
            left_out["partial"] += 1
            continue
        if any(run["run_id"] == result["run_id"] for run in complete):  # the same file found twice
            left_out["duplicate"] += 1
            continue
        key = repr(_configuration_key(result))
        complete.append({"key": key, "run_id": result["run_id"], "result": result, "path": str(path)})
    if not complete:
        return [], left_out
    runs = pd.DataFrame(complete).sort_values(["key", "run_id"], kind="stable")
    configurations = []
    for _, group in runs.groupby("key", sort=True):
        _check_same_queries(group)
        first = group["result"].iloc[0]
        method = first["method"]
        configurations.append(
            Configuration(
                dataset=first["dataset"]["name"],
                split=first["dataset"]["split"],
                method=method["name"],
                label=_label(first),
                trained_on=method.get("trained_on"),
                selected_on=(method.get("training") or {}).get("selected_on"),
                rerank=first["protocol"].get("rerank") or "none",
                tie_policy=first["protocol"].get("tie_policy", "?"),
                runs=list(group["result"]),
                arguments=dict(method.get("arguments") or {}),
                paths=list(group["path"]),
            )
        )
    return configurations, left_out


__all__ = ["METRIC_NAMES", "Configuration", "load_runs"]
