"""``tbps-bench eval -m A,B -d X,Y``: every method on every dataset, one result file each."""

from __future__ import annotations

import sys

from tbps_bench.errors import BenchError
from tbps_bench.options import Amp, FeatureStorage, argument
from tbps_bench.shortlist import PAIR_BATCH


def add_parser(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate methods on datasets (both directions)")
    parser.add_argument("-m", "--methods", required=True, help="comma-separated method names")
    parser.add_argument("-d", "--datasets", required=True, help="comma-separated dataset names")
    parser.add_argument("--data-root", help="dataset folder (or its parent); toy-pedes needs none")
    parser.add_argument("--checkpoint", help="checkpoint file for the method")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", type=argument(Amp), default=Amp.NONE, choices=list(Amp))
    parser.add_argument("--limit", type=int, help="first N gallery images only (partial run)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="results", help="folder for result files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="argument passed to every method, or with METHOD: to that one only (repeatable; values parsed as "
        "JSON when possible)",
    )
    parser.add_argument("--no-cache", action="store_true", help="re-encode even when cached features exist")
    parser.add_argument("--workers", type=int, default=0, help="image loading worker processes")
    parser.add_argument(
        "--score-tile",
        type=int,
        help="gallery items per score tile (default 4096), and the granularity of sharding across processes (recorded)",
    )
    parser.add_argument(
        "--feature-dtype",
        type=argument(FeatureStorage),
        choices=list(FeatureStorage),
        default=FeatureStorage.FP32,
        help="precision of stored features, in the cache and in memory (recorded; bf16/fp16 halve the memory)",
    )
    parser.add_argument(
        "--pair-batch",
        type=int,
        default=PAIR_BATCH,
        help=f"(query, candidate) pairs per forward pass of a re-ranking method's second stage (default {PAIR_BATCH})",
    )
    parser.add_argument(
        "--save-rankings",
        type=int,
        nargs="?",
        const=10,
        metavar="K",
        help="keep each query's top K gallery items and scores, both directions (K 10 when omitted), in a "
        ".rankings.npz beside the result (for tbps-bench report)",
    )
    parser.set_defaults(run=run)


def names_of(value: str, flag: str, kind: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise BenchError(f"{flag} {value!r} names no {kind}; give one or more names separated by commas")
    return names


def check_workers(workers: int) -> None:
    if workers < 0:
        raise BenchError(f"--workers must be >= 0 (0 loads images in the main process), got {workers}")


def run(args, argv) -> int:
    from dataclasses import replace

    from tbps_bench.arguments import parse_method_args
    from tbps_bench.cli.tables import metrics_table
    from tbps_bench.distributed import start
    from tbps_bench.fileio import check_writable_folder
    from tbps_bench.harness import EvalOptions, check_method_arguments, locate_datasets, run_eval
    from tbps_bench.results import load_result

    if args.batch_size < 1:
        raise BenchError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.score_tile is not None and args.score_tile < 1:
        raise BenchError(f"--score-tile must be >= 1, got {args.score_tile}")
    if args.pair_batch < 1:
        raise BenchError(f"--pair-batch must be >= 1, got {args.pair_batch}")
    if args.save_rankings is not None and args.save_rankings < 1:
        raise BenchError(f"--save-rankings must be >= 1, got {args.save_rankings}")
    if args.limit is not None and args.limit < 1:
        raise BenchError(f"--limit must be >= 1, got {args.limit}")
    check_workers(args.workers)
    methods = names_of(args.methods, "-m/--methods", "method")
    datasets = names_of(args.datasets, "-d/--datasets", "dataset")
    check_writable_folder(args.out, "--out")
    method_args = parse_method_args(args.method_arg, methods)
    for method in methods:  # every method's arguments are checked before anything is encoded
        check_method_arguments(method, method_args.for_method(method), args.checkpoint)
    world, device = start(args.device)
    locate_datasets(datasets, args.data_root, world)
    options = EvalOptions(
        data_root=args.data_root,
        checkpoint=args.checkpoint,
        device=device,
        batch_size=args.batch_size,
        amp=args.amp,
        limit=args.limit,
        out_dir=args.out,
        split=args.split,
        seed=args.seed,
        use_cache=not args.no_cache,
        workers=args.workers,
        feature_dtype=args.feature_dtype,
        pair_batch=args.pair_batch,
        save_rankings=args.save_rankings,
        **({"score_tile": args.score_tile} if args.score_tile else {}),
    )
    failures, rows = [], {}
    for dataset in datasets:
        for method in methods:
            try:
                own = replace(options, method_args=method_args.for_method(method))
                for path in run_eval(method, dataset, own, argv, world):
                    result = load_result(path)
                    rows[f"{method} @ {dataset}/{result['dataset']['split']}"] = result["metrics"]
                    print(f"wrote {path}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - one method's failure never stops the others
                if world.distributed:  # ... except in a distributed job: its processes must stay in step
                    raise
                message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                message = " ".join(message.split())  # one line, whatever a library put in its message
                failures.append(f"{method} on {dataset}: {message}")
                print(f"error: {method} on {dataset}: {message}", file=sys.stderr)
    if rows and world.is_main:
        print(metrics_table(rows))
    if failures:
        print(f"{len(failures)} of {len(methods) * len(datasets)} evaluations failed", file=sys.stderr)
        return 1
    return 0
