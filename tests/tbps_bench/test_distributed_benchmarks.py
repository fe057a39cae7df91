"""Scale: exact metrics of 20,000 text queries over a 1,000,000-image gallery, 1 and 2 processes.

Run with ``pytest tests/tbps_bench/test_distributed_benchmarks.py -m heavy -n 0 --benchmark-enable -s``. Each world
size runs in fresh processes under torchrun with the machine's cores split between them; each
process reports its floor (every score tile of its shard), its exact-ranking time and its peak
resident memory (``tests/tbps_bench/distributed/million.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "distributed" / "million.py"


def _run(processes: int, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    run = subprocess.run([*command, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.heavy
def test_million_image_gallery_exact_with_one_and_two_processes(benchmark, tmp_path):
    reports: dict[int, dict] = {}

    def both() -> None:
        for processes in (1, 2):
            reports[processes] = _run(processes, tmp_path / f"world{processes}.json")

    benchmark.pedantic(both, rounds=1, iterations=1)
    one, two = reports[1], reports[2]
    assert one["brute_force_first_ranks_equal"] is True
    assert two["metrics"] == one["metrics"]
    assert two["per_query_sha256"] == one["per_query_sha256"]  # first-hit ranks and APs, bit for bit
    print()
    print("| processes | rank | floor (score tiles) | exact metrics | ratio | peak memory | gallery shard |")
    print("|---|---|---|---|---|---|---|")
    for processes, report in reports.items():
        for rank in report["ranks"]:
            ratio = rank["exact_s"] / rank["floor_s"]
            print(
                f"| {processes} | {rank['rank']} | {rank['floor_s']:.1f} s | {rank['exact_s']:.1f} s | {ratio:.2f}x "
                f"| {rank['peak_gib']:.2f} GiB | {rank['shard_gib']:.2f} GiB |"
            )
            assert rank["peak_gib"] <= rank["shard_gib"] + 1.0, rank  # the shard plus 1 GiB
    print(f"metrics: {one['metrics']}")
    benchmark.extra_info.update({f"world{k}": v for k, v in reports.items()})
