"""``tbps-bench score FILE.npz``: metrics for any method from a saved score matrix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tbps_bench.errors import BenchError
from tbps_bench.fileio import read_npz

_KEYS = ("similarity", "text_ids", "image_ids")


def add_parser(commands) -> None:
    parser = commands.add_parser("score", help="score a saved (texts x images) similarity matrix")
    parser.add_argument("file", help=".npz with similarity (texts x images), text_ids, image_ids")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    parser.add_argument(
        "--skip-queries-without-positives",
        action="store_true",
        help="drop queries whose id has no gallery item (counted in the output) instead of stopping",
    )
    parser.set_defaults(run=run)


def load_npz(path: str | Path):
    data = read_npz(path)
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise BenchError(f"{path}: missing array(s) {', '.join(missing)}; expected {', '.join(_KEYS)}")
    return tuple(data[k] for k in _KEYS)


def run(args, argv) -> int:
    import torch

    from tbps_bench.metrics import evaluate_scores

    similarity, text_ids, image_ids = load_npz(args.file)
    if similarity.dtype.kind != "f":
        raise BenchError(f"{args.file}: 'similarity' must be floating point, got {similarity.dtype}")
    for name, ids in (("text_ids", text_ids), ("image_ids", image_ids)):
        if ids.dtype.kind not in "iu":
            raise BenchError(f"{args.file}: '{name}' must hold integer ids, got {ids.dtype}")
    result = evaluate_scores(
        torch.from_numpy(similarity),
        torch.from_numpy(text_ids),
        torch.from_numpy(image_ids),
        skip_queries_without_positives=args.skip_queries_without_positives,
    )
    summary = result.summary()
    skipped = {"t2i": result.t2i.skipped_queries, "i2t": result.i2t.skipped_queries}
    if any(skipped.values()):
        print(f"note: queries without a positive were skipped: {skipped}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        from tbps_bench.cli.tables import metrics_table

        print(metrics_table({"score": summary}))
    return 0
