"""``tbps-bench data check|info``: verify a dataset copy against its spec; print statistics."""

from __future__ import annotations

import json
import os


def add_parser(commands) -> None:
    parser = commands.add_parser("data", help="check or describe a dataset copy")
    sub = parser.add_subparsers(dest="data_command", required=True)
    check = sub.add_parser("check", help="verify layout, schema, counts and images against the spec")
    check.add_argument("-d", "--dataset", required=True)
    check.add_argument("--root", help="the dataset's folder (or its parent)")
    check.add_argument("--json", action="store_true")
    check.add_argument("--quick", action="store_true", help="read image headers only (misses truncated files)")
    check.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes decoding images (default: all cores)"
    )
    check.set_defaults(run=run_check)
    info = sub.add_parser("info", help="per-split statistics")
    info.add_argument("-d", "--dataset", required=True)
    info.add_argument("--root", help="the dataset's folder (or its parent)")
    info.set_defaults(run=run_info)


def run_check(args, argv) -> int:
    from tbps_bench.adapters import load_dataset
    from tbps_bench.cli.eval_cmd import check_workers
    from tbps_bench.errors import BenchError

    check_workers(args.workers)
    dataset = load_dataset(args.dataset, args.root)
    check = getattr(dataset, "check", None)  # the adapter's own check: the core reads no dataset module
    if not callable(check):
        raise BenchError(f"dataset '{args.dataset}' has no check (its adapter provides no check(quick, workers))")
    report = check(quick=args.quick, workers=args.workers)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1, allow_nan=False))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else 1


def run_info(args, argv) -> int:
    from tabulate import tabulate

    from tbps_bench.adapters import load_dataset

    dataset = load_dataset(args.dataset, args.root)
    stats = dataset.split_statistics()
    rows = [
        [name, s["ids"], s["images"], s["captions"], f"{s['words_mean']:.1f}", s["words_min"], s["words_max"]]
        for name, s in stats.items()
    ]
    print(f"{dataset.spec.title}: {dataset.spec.citation}")
    print(tabulate(rows, headers=["split", "ids", "images", "captions", "words mean", "min", "max"], tablefmt="github"))
    return 0
