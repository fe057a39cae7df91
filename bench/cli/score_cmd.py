"""``tbps-bench score FILE.npz``: metrics for any method from a saved score matrix."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tbps_bench.errors import BenchError

_KEYS = ("similarity", "text_ids", "image_ids")


def add_parser(commands) -> None:
    parser = commands.add_parser("score", help="score a saved (texts x images) similarity matrix")
    parser.add_argument("file", help=".npz with similarity (texts x images), text_ids, image_ids")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    parser.set_defaults(run=run)


def load_npz(path: str | Path):
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing:
                raise BenchError(f"{path}: missing array(s) {', '.join(missing)}; expected {', '.join(_KEYS)}")
            return tuple(data[k] for k in _KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BenchError(f"{path}: unreadable .npz file ({type(exc).__name__}: {exc})") from exc


def run(args, argv) -> int:
    import torch

    from tbps_bench.metrics import evaluate_scores

    similarity, text_ids, image_ids = load_npz(args.file)
    if similarity.dtype.kind != "f":
        raise BenchError(f"{args.file}: 'similarity' must be floating point, got {similarity.dtype}")
    for name, ids in (("text_ids", text_ids), ("image_ids", image_ids)):
        if ids.dtype.kind not in "iu":
            raise BenchError(f"{args.file}: '{name}' must hold integer ids, got {ids.dtype}")
    result = evaluate_scores(torch.from_numpy(similarity), torch.from_numpy(text_ids), torch.from_numpy(image_ids))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        from tbps_bench.cli.tables import metrics_table

        print(metrics_table({"score": summary}))
    return 0
