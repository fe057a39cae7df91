"""``tbps-bench report RESULT [RESULT2]``: a static HTML page of where a model fails."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="HTML page of per-query rankings (one result, or two of the same dataset compared)"
    )
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result file(s) evaluated with --save-rankings")
    parser.add_argument("--out", help="report folder (default: beside the first result, <name>.report)")
    parser.add_argument("--data-root", help="image folder for the thumbnails (default: the one the run read)")
    parser.set_defaults(run=run)


def run(args, argv) -> int:
    from tbps_bench.errors import BenchError
    from tbps_bench.report.page import write_report

    if len(args.results) > 2:
        raise BenchError(f"report takes one result, or two to compare; got {len(args.results)}")
    first = Path(args.results[0])
    out = Path(args.out) if args.out else first.with_name(first.stem + ".report")
    page = write_report(args.results, out, args.data_root)
    print(f"wrote {page}", file=sys.stderr)
    return 0
