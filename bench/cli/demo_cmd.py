"""``tbps-bench demo``: the whole benchmark on the embedded toy-pedes, on a CPU, in minutes."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

DEMO_METHODS = ("nafs-tiny", "frozen-linear")
DATASET = "toy-pedes"


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="generate toy-pedes, train two methods, evaluate, write the leaderboard")
    parser.add_argument("--runs", default="runs", help="folder for training runs (re-used on a second demo)")
    parser.add_argument("--leaderboards", default="leaderboards", help="leaderboard folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.set_defaults(run=run)


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _trained(method: str, args, argv) -> Path:
    """The selected checkpoint of ``method`` on toy-pedes: trained now, resumed, or re-used."""
    from tbps_bench.training import TrainOptions, run_folder, train

    options = TrainOptions(out_dir=args.runs, device=args.device)
    folder = run_folder(options, method, DATASET)
    if (folder / "train.json").is_file() and (folder / "best").is_dir():
        _say(f"re-using the trained {method} in {folder}")
        return folder / "best"
    options.resume = (folder / "resume.pt").is_file()
    _say(f"{'resuming' if options.resume else 'training'} {method} on {DATASET} (train split; best epoch on val)")
    started = time.perf_counter()
    checkpoint = train(method, DATASET, options, argv)
    _say(f"{method} trained in {time.perf_counter() - started:.0f} s")
    return checkpoint


def _committed(leaderboards: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(method, direction) -> (R@1, CI low, CI high) on the toy-pedes page as it stood before this run."""
    import pandas as pd

    page = leaderboards / f"{DATASET}.csv"
    if not page.is_file():
        return {}
    frame = pd.read_csv(page)
    ours = frame[(frame["source"] == "this project") & (frame["split"] == "test")]
    return {
        (row.method.split(" ")[0], row.direction): (row.R1, row.R1_ci_low, row.R1_ci_high) for row in ours.itertuples()
    }


def _compare(fresh: dict[str, dict], committed: dict[tuple[str, str], tuple[float, float, float]]) -> None:
    """This run's R@1 beside the committed leaderboard's, and whether it falls in the committed 95 % CI."""
    if not committed:
        _say("no committed toy-pedes leaderboard to compare with")
        return
    for key, metrics in fresh.items():
        method = key.split(" @ ")[0]
        for direction in ("t2i", "i2t"):
            if (method, direction) not in committed:
                continue
            r1, low, high = committed[(method, direction)]
            now = metrics[direction]["R1"]
            verdict = "inside" if low <= now <= high else "OUTSIDE"
            _say(
                f"{method} {direction} R@1 {now:.2f}; committed {r1:.2f} (95% CI {low:.2f}-{high:.2f}): {verdict} "
                "the committed interval"
            )


def _instruction_sets(hardware: dict) -> tuple[str, str | None]:
    """(ATen's instruction set, oneDNN's): they decide the rounding. An uncapped oneDNN on a CPU
    whose best is AVX2 uses AVX2; elsewhere its own choice is not recorded (None)."""
    aten = str(hardware.get("cpu_capability"))
    return aten, hardware.get("onednn_max_cpu_isa") or ("AVX2" if aten == "AVX2" else None)


def _committed_instruction_sets(results: Path) -> set[tuple[str, str | None]]:
    """The instruction sets of the committed demo result files, read before this run replaces them."""
    found = set()
    for path in results.rglob("*.json"):
        try:
            hardware = json.loads(path.read_text(encoding="utf-8"))["provenance"]["hardware"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.add(_instruction_sets(hardware))
    return found


def _same_bits_hint(committed: set[tuple[str, str | None]]) -> None:
    """Where the committed results were computed with other instruction sets, how to get their bits."""
    from tbps_bench.provenance import hardware

    here = _instruction_sets(hardware())
    if len(committed) != 1 or here in committed:
        return
    aten, onednn = next(iter(committed))
    caps = f"ATEN_CPU_CAPABILITY={aten.lower()}" + (f" ONEDNN_MAX_CPU_ISA={onednn}" if onednn else "")
    theirs, ours = f"{aten} / {onednn or 'unrecorded'}", f"{here[0]} / {here[1] or 'uncapped'}"
    _say(
        f"the committed results were computed with instruction sets {theirs} (ATen / oneDNN), this run with {ours}: "
        f"they round differently. For the committed bits: {caps} tbps-bench demo "
        "(models/nafs/README.md, 'Bit-exact on another CPU')"
    )


def run(args, argv) -> int:
    from tbps_bench.cli.tables import metrics_table
    from tbps_bench.harness import EvalOptions, load_eval_split, run_eval
    from tbps_bench.leaderboard import build_leaderboards
    from tbps_bench.results import load_result

    started = time.perf_counter()
    _say(f"preparing {DATASET} (generated once into the cache, then read through the CUHK-PEDES adapter)")
    split = load_eval_split(DATASET, None, "test")
    _say(f"{DATASET} test split: {split.counts()} ({time.perf_counter() - started:.0f} s)")
    checkpoints = {method: _trained(method, args, argv) for method in DEMO_METHODS}
    committed = _committed(Path(args.leaderboards))
    results = Path(args.leaderboards) / "results" / "demo"
    committed_sets = _committed_instruction_sets(results)
    if results.exists():
        shutil.rmtree(results)  # the demo's own previous results: one set of rows, not one per demo run
    rows = {}
    for method, checkpoint in [("random", None), *checkpoints.items()]:
        _say(f"evaluating {method} on {DATASET} test, both directions")
        options = EvalOptions(
            checkpoint=str(checkpoint) if checkpoint else None, device=args.device, out_dir=str(results)
        )
        evaluation_started = time.perf_counter()
        for path in run_eval(method, DATASET, options, argv):
            rows[f"{method} @ {DATASET}/test"] = load_result(path)["metrics"]
        _say(f"{method} evaluated in {time.perf_counter() - evaluation_started:.0f} s")
    report = build_leaderboards(Path(args.leaderboards) / "results", args.leaderboards)
    print(metrics_table(rows))
    _compare(rows, committed)
    _same_bits_hint(committed_sets)
    minutes = (time.perf_counter() - started) / 60
    _say(f"done in {minutes:.1f} min")
    _say(f"training runs and checkpoints: {args.runs}/<method>/{DATASET}/seed0/")
    _say(f"result files: {results}/")
    _say(f"leaderboard: {Path(args.leaderboards) / (DATASET + '.md')} ({len(report['pages'])} pages, CMC plots beside)")
    return 0
