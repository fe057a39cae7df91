"""``tbps-bench train -m METHOD -d DATASET``: the shared training loop, from the command line."""

from __future__ import annotations

import sys

from tbps_bench.errors import BenchError
from tbps_bench.options import Amp, SelectOn, argument


def add_parser(commands) -> None:
    parser = commands.add_parser("train", help="train a method on a dataset's train split")
    parser.add_argument("-m", "--method", required=True)
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("--data-root", help="dataset folder (or its parent); toy-pedes needs none")
    parser.add_argument("--config", help="the method's config: a preset name (e.g. nafs-tiny) or a JSON file")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--amp", type=argument(Amp), default=Amp.NONE, choices=list(Amp))
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run found in the output folder without its resume file"
    )
    parser.add_argument(
        "--select-on",
        type=argument(SelectOn),
        default=SelectOn.VAL,
        choices=list(SelectOn),
        help="split that picks the best epoch (test is recorded in every result computed from it)",
    )
    parser.add_argument("--epochs", type=int, help="override the schedule's number of epochs")
    parser.add_argument("--max-steps", type=int, help="batches per epoch at most (a quick smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs", help="folder for checkpoints and logs")
    parser.add_argument("--workers", type=int, default=0, help="image loading worker processes")
    parser.add_argument(
        "--no-cache", action="store_true", help="re-encode a frozen backbone's features instead of reading the cache"
    )
    parser.add_argument("--method-arg", action="append", default=[], metavar="[METHOD:]KEY=VALUE")
    parser.set_defaults(run=run)


def run(args, argv) -> int:
    from tbps_bench.arguments import parse_method_args
    from tbps_bench.cli.eval_cmd import check_workers
    from tbps_bench.distributed import start
    from tbps_bench.fileio import check_writable_folder
    from tbps_bench.harness import check_method_arguments
    from tbps_bench.training import TrainOptions, train

    for flag, value in (("--epochs", args.epochs), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise BenchError(f"{flag} must be >= 1, got {value}")
    check_workers(args.workers)
    check_writable_folder(args.out, "--out")
    method_args = parse_method_args(args.method_arg, [args.method]).for_method(args.method)
    if args.config:
        method_args["config"] = args.config
    check_method_arguments(args.method, method_args, None)
    world, device = start(args.device)
    options = TrainOptions(
        data_root=args.data_root,
        out_dir=args.out,
        device=device,
        amp=args.amp,
        resume=args.resume,
        overwrite=args.overwrite,
        select_on=args.select_on,
        seed=args.seed,
        workers=args.workers,
        epochs=args.epochs,
        max_steps_per_epoch=args.max_steps,
        use_cache=not args.no_cache,
        method_args=method_args,
    )
    best = train(args.method, args.dataset, options, argv, world)
    if not world.is_main:
        return 0
    print(f"selected checkpoint: {best}", file=sys.stderr)
    print(f"evaluate it with: tbps-bench eval -m {args.method} -d {args.dataset} --checkpoint {best}", file=sys.stderr)
    return 0
