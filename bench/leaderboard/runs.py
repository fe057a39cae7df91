"""Result files grouped into configurations: one row per configuration, several runs (seeds) each."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.fileio import sha256_json
from tbps_bench.results import METRIC_NAMES, load_result

#: arguments that distinguish runs of one configuration rather than configurations
RUN_ARGUMENTS = {"seed"}
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 20210108


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

    @property
    def cross_domain(self) -> bool:
        return self.trained_on is not None and self.trained_on != self.dataset

    @property
    def dirty(self) -> bool:
        return any(run["provenance"].get("git", {}).get("dirty") for run in self.runs)

    def metric(self, direction: str, name: str) -> tuple[float, float | None]:
        """Mean over runs and the sample standard deviation (None for a single run)."""
        values = [float(run["metrics"][direction][name]) for run in self.runs]
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, None
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    def cmc(self, direction: str, max_rank: int = 20) -> list[float]:
        ranks = torch.cat([torch.tensor(run["per_query"][f"{direction}_first_hit_rank"]) for run in self.runs])
        return [100.0 * float((ranks <= k).double().mean()) for k in range(1, max_rank + 1)]

    def recall_at_1_interval(self, direction: str) -> tuple[float, float]:
        """95 % bootstrap interval of R@1, resampling queries (jointly across runs)."""
        hits = torch.stack(
            [torch.tensor(run["per_query"][f"{direction}_first_hit_rank"]) == 1 for run in self.runs]
        ).double()  # runs x queries
        generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
        samples = torch.randint(0, hits.shape[1], (BOOTSTRAP_SAMPLES, hits.shape[1]), generator=generator)
        estimates = hits.mean(0)[samples].mean(1) * 100.0
        low, high = torch.quantile(estimates, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return low, high

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


def load_runs(results_dir: Path, skip_invalid: bool) -> tuple[list[Configuration], dict[str, int]]:
    """Complete runs grouped by configuration, and counts of what was left out."""
    files = sorted(p for p in results_dir.rglob("*.json") if p.is_file()) if results_dir.is_dir() else []
    left_out = {"partial": 0, "invalid": 0}
    groups: dict[tuple, Configuration] = {}
    for path in files:
        try:
            result = load_result(path)
            for direction in ("t2i", "i2t"):
                ranks = result.get("per_query", {}).get(f"{direction}_first_hit_rank")
                if not isinstance(ranks, list) or not ranks:
                    raise BenchError(f"{path}: field 'per_query.{direction}_first_hit_rank' is missing or empty")
        except BenchError as exc:
            if not skip_invalid:
                raise BenchError(f"{exc} (use --skip-invalid to build without it)") from exc
            print(f"skipped: {exc}", file=sys.stderr)
            left_out["invalid"] += 1
            continue
        if result["status"] != "complete" or result["dataset"].get("limit") is not None:
            left_out["partial"] += 1
            continue
        key = _configuration_key(result)
        if key not in groups:
            method = result["method"]
            training = method.get("training") or {}
            groups[key] = Configuration(
                dataset=result["dataset"]["name"],
                split=result["dataset"]["split"],
                method=method["name"],
                label=_label(result),
                trained_on=method.get("trained_on"),
                selected_on=training.get("selected_on"),
                rerank=result["protocol"].get("rerank") or "none",
                tie_policy=result["protocol"].get("tie_policy", "?"),
            )
        groups[key].runs.append(result)
    for configuration in groups.values():
        configuration.runs.sort(key=lambda run: run["run_id"])
    return list(groups.values()), left_out


__all__ = ["METRIC_NAMES", "Configuration", "load_runs"]
