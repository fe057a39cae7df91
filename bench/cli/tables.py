"""Terminal tables of metrics."""

from __future__ import annotations

from tabulate import tabulate

from tbps_bench.results import METRIC_NAMES


def metrics_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    header = ["run", "direction", *METRIC_NAMES]
    body = [
        [label, direction, *(f"{summary[direction][m]:.2f}" for m in METRIC_NAMES)]
        for label, summary in rows.items()
        for direction in ("t2i", "i2t")
    ]
    return tabulate(body, headers=header, tablefmt="github")
