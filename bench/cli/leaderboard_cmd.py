"""``tbps-bench leaderboard build [--check]``: result files to committed markdown."""

from __future__ import annotations

import sys


def add_parser(commands) -> None:
    parser = commands.add_parser("leaderboard", help="generate leaderboard markdown from result files")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="write leaderboards/<dataset>.md, README.md and CMC plots")
    build.add_argument(
        "--results", default="leaderboards/results", help="folder of result files (searched recursively)"
    )
    build.add_argument("--out", default="leaderboards", help="folder of the generated pages")
    build.add_argument("--reported", help="folder of reported-results TOML files (default: OUT/reported)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if the pages are stale")
    build.add_argument("--skip-invalid", action="store_true", help="leave out invalid result files (named on stderr)")
    build.set_defaults(run=run)


def run(args, argv) -> int:
    from tbps_bench.leaderboard import build_leaderboards

    report = build_leaderboards(args.results, args.out, args.reported, check=args.check, skip_invalid=args.skip_invalid)
    left = f"{report['partial']} partial and {report['invalid']} invalid result files left out"
    if report.get("duplicate"):
        left += f"; {report['duplicate']} found twice, counted once"
    if args.check:
        if report["stale"]:
            print(f"stale leaderboard files in {args.out}: {', '.join(report['stale'])}", file=sys.stderr)
            print("run: tbps-bench leaderboard build", file=sys.stderr)
            return 1
        print(f"{len(report['pages'])} leaderboard pages are up to date ({left})", file=sys.stderr)
        return 0
    print(f"wrote {', '.join(report['pages'])} in {args.out} ({report['configurations']} configurations; {left})")
    return 0
