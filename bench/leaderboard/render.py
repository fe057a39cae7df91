"""Markdown tables and CMC plots; the same inputs always give the same bytes."""

from __future__ import annotations

from pathlib import Path

from tbps_bench.leaderboard.reported import ReportedRow
from tbps_bench.leaderboard.runs import Configuration

DIRECTIONS = {"t2i": "Text-to-image", "i2t": "Image-to-text"}
HEADER = (
    "| method | R@1 | R@1 95% CI | R@5 | R@10 | mAP | mINP | R@1 reproduced - reported | runs | trained on "
    "| checkpoint | re-ranking | tie policy | tbps-bench | source |"
)


def _number(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _reported_value(row: ReportedRow, direction: str, name: str) -> str:
    value = row.metrics.get(direction, {}).get(name)
    return "—" if value is None else f"{value:.2f}"


def _escape(text: str) -> str:
    """A table cell from text other people wrote: one line, no column breaks, no markup, no HTML."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("*", "\\*")


def _our_row(config: Configuration, direction: str, reported: list[ReportedRow]) -> tuple[float, str]:
    r1, r1_std = config.metric(direction, "R1")
    low, high = config.recall_at_1_interval(direction)
    cells = [_escape(config.label) + (" †" if config.dirty else ""), _number(r1, r1_std), f"{low:.2f}–{high:.2f}"]
    cells += [_number(*config.metric(direction, name)) for name in ("R5", "R10", "mAP", "mINP")]
    match = next(
        (
            row
            for row in reported
            if config.domain == "in-domain"
            and row.reproduced_by == config.method
            and row.rerank == config.rerank
            and all(config.arguments.get(k) == v for k, v in row.reproduced_with.items())
            and "R1" in row.metrics.get(direction, {})
        ),
        None,
    )
    cells.append(f"{r1 - match.metrics[direction]['R1']:+.2f} vs {_escape(match.method)}" if match else "")
    trained = _escape(config.trained_on) if config.trained_on else "—"
    if config.selected_on == "test":
        trained += " (selected on test)"
    hashes = config.checkpoints()
    shown = ", ".join(f"`{h}`" for h in hashes) if len(hashes) <= 3 else f"{len(hashes)} checkpoints"
    cells += [str(len(config.runs)), trained, shown or "—"]
    cells += [
        _escape(config.rerank_in(direction)),
        _escape(config.tie_policy),
        _escape(config.versions()),
        "this project",
    ]
    return r1, "| " + " | ".join(cells) + " |"


def _reported_row(row: ReportedRow, direction: str) -> tuple[float, str]:
    cells = [
        f"*{_escape(row.method)}* ({_escape(row.venue)}) *reported*"
        if row.venue
        else f"*{_escape(row.method)}* *reported*"
    ]
    cells += [_reported_value(row, direction, "R1"), "—"]
    cells += [_reported_value(row, direction, name) for name in ("R5", "R10", "mAP", "mINP")]
    cells += ["", "—", "—", "—", _escape(row.rerank), "—", "—", f"*{_escape(row.citation)}*"]
    return row.metrics[direction].get("R1", -1.0), "| " + " | ".join(cells) + " |"


def table(configs: list[Configuration], reported: list[ReportedRow], direction: str, with_reported: bool) -> list[str]:
    rows = [_our_row(c, direction, reported) for c in configs]
    if with_reported:
        rows += [_reported_row(r, direction) for r in reported if direction in r.metrics]
    if not rows:
        return []
    rows.sort(key=lambda item: (-item[0], item[1]))
    separator = "|" + "|".join("---" for _ in HEADER.strip("|").split("|")) + "|"
    return [HEADER, separator, *(line for _, line in rows)]


def cmc_plot(path: Path, title: str, configs: list[Configuration], direction: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    ranks = list(range(1, 21))
    for config in sorted(configs, key=lambda c: c.label):
        axes.plot(ranks, config.cmc(direction), marker="o", markersize=3, label=config.label)
    axes.set_xlabel("rank")
    axes.set_ylabel("matching rate (%)")
    axes.set_title(title)
    axes.set_xticks([1, 5, 10, 15, 20])
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
