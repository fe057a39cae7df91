"""The CUDA paths of tbps-bench in one short run (a few minutes on one GPU), printed as one table.

    python scripts/gpu_check.py            # everything
    python scripts/gpu_check.py --no-demo  # without the demo (the longest part)

Parts: the CUDA test marker (``pytest -m cuda``); ``tbps-bench demo --device cuda --amp bf16`` into a
temporary folder; the metrics kernel at ICFG-PEDES size against the GPU floor (both score matrices
plus a top-10 per row); the NAFS scorer at CUHK-PEDES test size against the GPU's matmul rate; IRRA
encoding throughput (ViT-B/16 at 384 x 128, bf16); a 1-process NCCL job under torchrun (an
evaluation and a training step). Without a CUDA device every GPU part is skipped
and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ICFG, CUHK_IMAGES, CUHK_TEXTS = 19848, 3074, 6156


def _timed(function: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def cuda_tests() -> tuple[str, str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return ("ok" if done.returncode == 0 else "FAILED"), last


def demo() -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        boards = Path(tmp) / "leaderboards"
        shutil.copytree(ROOT / "leaderboards" / "reported", boards / "reported")
        command = [sys.executable, "-m", "tbps_bench", "demo", "--device", "cuda", "--amp", "bf16"]
        start = time.perf_counter()
        done = subprocess.run(
            [*command, "--runs", str(Path(tmp) / "runs"), "--leaderboards", str(boards)],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    tail = " | ".join(line for line in done.stdout.splitlines() if "toy-pedes/test" in line and "t2i" in line)
    return ("ok" if done.returncode == 0 else "FAILED"), f"{seconds:.0f} s; {tail or done.stderr[-300:]}"


def metrics_icfg() -> tuple[str, str]:
    from tbps_bench import evaluate_embeddings

    generator = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.arange(ICFG, device="cuda") % 1000
    centres = torch.randn(1000, 512, device="cuda", generator=generator)
    text = torch.nn.functional.normalize(centres[ids] + 3 * torch.randn(ICFG, 512, device="cuda", generator=generator))
    image = torch.nn.functional.normalize(centres[ids] + 3 * torch.randn(ICFG, 512, device="cuda", generator=generator))

    def floor():
        for queries, gallery in ((text, image), (image, text)):
            (queries @ gallery.T).topk(10, dim=1)

    floor_s = min(_timed(floor) for _ in range(3))
    first = _timed(lambda: evaluate_embeddings(text, image, ids, ids))
    warm = min(_timed(lambda: evaluate_embeddings(text, image, ids, ids)) for _ in range(2))
    return "ok", f"first {first:.2f} s ({first / floor_s:.2f}x), warm {warm:.2f} s ({warm / floor_s:.2f}x floor)"


def nafs_cuhk() -> tuple[str, str]:
    from tbps_models.nafs.scoring import local_similarity

    generator = torch.Generator(device="cuda").manual_seed(0)
    regions, length, dim = 6, 101, 768

    def tensor(*shape):
        return torch.randn(*shape, device="cuda", generator=generator)

    lengths = torch.randint(15, 60, (CUHK_TEXTS,), device="cuda", generator=generator)
    keys, values = tensor(CUHK_TEXTS, length, dim), tensor(CUHK_TEXTS, length, dim)
    queries, image_values = tensor(CUHK_IMAGES, regions, dim), tensor(CUHK_IMAGES, regions, dim)

    def score():
        with torch.inference_mode():
            for start in range(0, CUHK_IMAGES, 256):
                part = slice(start, start + 256)
                local_similarity(queries[part], image_values[part], keys, values, lengths)

    score()  # warm-up
    seconds = _timed(score)
    useful = 2.0 * 2 * regions * dim * float(lengths.sum()) * CUHK_IMAGES
    a, b = tensor(8192, 8192), tensor(8192, 8192)
    rate = 2 * 8192**3 / min(_timed(lambda: a @ b) for _ in range(3))
    return (
        "ok",
        f"{seconds:.2f} s, {useful / seconds / 1e12:.1f} TFLOP/s = {useful / seconds / rate:.0%} of fp32 matmul",
    )


def encoding() -> tuple[str, str]:
    from tbps_models.clip_reid.model import ClipReidModel

    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from clip_sizes import VIT_B16

    model = ClipReidModel(VIT_B16, "irra", embedding="bge").cuda().eval()
    pixels = torch.randn(64, 3, 384, 128, device="cuda")
    ids = model.tokenize(["a woman in a red coat carrying a black purse"] * 64).cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.embed_images(pixels), model.embed_texts(ids)  # warm-up
        images = min(_timed(lambda: model.embed_images(pixels)) for _ in range(3))
        texts = min(_timed(lambda: model.embed_texts(ids)) for _ in range(3))
    return "ok", f"{64 / images:.0f} images/s, {64 / texts:.0f} captions/s (bf16, batch 64)"


def nccl() -> tuple[str, str]:
    """A 1-process NCCL job under torchrun: an evaluation and a training step on the GPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "tbps_bench"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TBPS_BENCH_CACHE": str(Path(tmp) / "cache")}
        steps = {
            "eval": ["eval", "-m", "frozen-linear", "-d", "toy-pedes", "--device", "cuda", "--out", f"{tmp}/results"],
            "train step": [
                "train",
                "-m",
                "nafs-tiny",
                "-d",
                "toy-pedes",
                "--device",
                "cuda",
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--select-on",
                "last",
                "--out",
                f"{tmp}/runs",
            ],
        }
        report = []
        for name, args in steps.items():
            start = time.perf_counter()
            done = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                return "FAILED", f"{name}: {done.stderr.strip().splitlines()[-1:]}"
            report.append(f"{name} {time.perf_counter() - start:.0f} s")
        results = list(Path(tmp, "results").glob("*/*/*.json"))
        backend = json.loads(results[0].read_text())["provenance"]["distributed"]["backend"] if results else None
    return ("ok" if backend == "nccl" else "FAILED"), f"backend {backend}; " + ", ".join(report)


PARTS: dict[str, Callable[[], tuple[str, str]]] = {
    "CUDA tests (pytest -m cuda)": cuda_tests,
    "demo --device cuda --amp bf16": demo,
    "metrics, ICFG size (19,848 x 19,848)": metrics_icfg,
    "NAFS scorer, CUHK test size (3,074 x 6,156)": nafs_cuhk,
    "irra encoding, ViT-B/16 384 x 128": encoding,
    "torchrun, 1 process, NCCL: eval + train step": nccl,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-demo", action="store_true", help="leave out the demo (the longest part)")
    args = parser.parse_args(argv)
    available = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if available else "no CUDA device"
    rows, failed = [], False
    for name, part in PARTS.items():
        if not available:
            status, detail = "skipped", "no CUDA device: this part needs one"
        elif name.startswith("demo") and args.no_demo:
            status, detail = "skipped", "--no-demo"
        else:
            try:
                status, detail = part()
            except Exception as exc:  # noqa: BLE001 - every part reports, whatever fails
                status, detail = "FAILED", f"{type(exc).__name__}: {exc}"
        failed |= status == "FAILED"
        rows.append((name, status, detail))
    width = max(len(name) for name, _, _ in rows)
    print(f"GPU check on {device} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    print(f"| {'part'.ljust(width)} | status | result |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for name, status, detail in rows:
        print(f"| {name.ljust(width)} | {status} | {detail} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
