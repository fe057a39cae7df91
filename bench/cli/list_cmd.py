"""``tbps-bench list``: every registered method and dataset with its origin."""

from __future__ import annotations

from tbps_bench.errors import BenchError


def add_parser(commands) -> None:
    parser = commands.add_parser("list", help="list registered methods and datasets")
    parser.add_argument("--load", action="store_true", help="also import each plugin to check it loads")
    parser.set_defaults(run=run)


def run(args, argv) -> int:
    from tbps_bench.registry import DATASETS, METHODS

    for registry in (METHODS, DATASETS):
        print(f"{registry.kind}s:")
        try:
            entries = registry.entries()
        except BenchError as exc:
            print(f"  (registry broken: {exc})")
            continue
        for entry in entries:
            status = ""
            if args.load:
                try:
                    registry.load(entry.name)
                    status = "  [ok]"
                except BenchError as exc:
                    status = f"  [broken: {exc}]"
            print(f"  {entry.name:<16} {entry.origin}{status}")
    return 0
