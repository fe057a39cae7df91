"""Several processes under torchrun (gloo, 2 ranks on toy-pedes) give the one-process numbers.

Real processes started with ``python -m torch.distributed.run``; the one-process runs go through
the same CLI in this process. The commands that must succeed share one job (``shared_job``: a
program that sets up its process group once and runs each command in turn, as a training script
that evaluates under torchrun does); the jobs that must fail, time out or be interrupted have their
own. Sharding is made real on the small toy splits
with ``--score-tile 32 --batch-size 32`` (a shard unit of 32 items)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tbps_bench.cli import main

from paths import FIXTURES
from tiny_clip import TINY_CLIP

HERE = Path(__file__).parent
SHARDED = ["--score-tile", "32", "--batch-size", "32"]


def launch(args: list[str], cache: Path, script: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a 2-process torchrun job on this machine's CPUs."""
    target = [script] if script else ["-m", "tbps_bench"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    env = {**os.environ, "TBPS_BENCH_CACHE": str(cache), "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}
    return command, env


def torchrun(args: list[str], cache: Path, script: str | None = None) -> subprocess.CompletedProcess:
    """The job, run to its end."""
    command, env = launch(args, cache, script)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def results(folder: Path) -> dict[str, dict]:
    """The result files of an output folder, by method."""
    found = {}
    for path in sorted(folder.glob("*/*/*.json")):
        found[path.parent.name] = json.loads(path.read_text())
    return found


class SharedJob:
    """One torchrun job's commands (``distributed/commands.py``): each one's exit code and output on
    every process, and the folder its files went to."""

    def __init__(self, root: Path, plan: list[dict], clip_entries: set[str]):
        self.root = root
        #: the feature-cache entries one process wrote for clip before the job (its "eval" reads them)
        self.clip_entries = clip_entries
        (root / "plan.json").write_text(json.dumps(plan))
        script = str(HERE / "distributed" / "commands.py")
        self.run = torchrun([str(root / "plan.json")], root / "cache", script=script)

    def out(self, name: str) -> Path:
        return self.root / name

    def succeeded(self, name: str) -> str:
        """Rank 0's stdout of command ``name``, after checking that it exited 0 on both processes."""
        assert self.run.returncode == 0, self.run.stderr[-3000:]
        for rank in (0, 1):
            code = int((self.root / f"{name}.rank{rank}.code").read_text())
            assert code == 0, (self.root / f"{name}.rank{rank}.err").read_text()[-3000:]
        return (self.root / f"{name}.rank0.out").read_text()


REFERENCE_EVALUATIONS = {
    "rasa": ["--method-arg", "k=4", "--batch-size", "4"],
    # APTM's fusion is a property of the score, not of the job: 4 "processes" of fusion under 2
    "aptm": ["--method-arg", "fusion_world_size=4"],
}


def _reference_evaluation(method: str, checkpoint: Path | None = None) -> list[str]:
    folder = FIXTURES / f"{method}_reference"
    checkpoint = checkpoint or folder / f"{method}_checkpoint.pth"
    evaluate = ["eval", "-m", method, "-d", "cuhk-pedes", "--data-root", str(folder), "--checkpoint", str(checkpoint)]
    if method in REFERENCE_EVALUATIONS:
        evaluate += ["--pair-batch", "7", *REFERENCE_EVALUATIONS[method]]
    return evaluate


#: the committed tiny CLIP: the third method of the cache-sharing evaluation
TINY_CLIP_ARGUMENTS = [f"clip:model={TINY_CLIP}", "clip:image_height=64", "clip:image_width=32"]


def _toy_evaluation(*methods: str) -> list[str]:
    """``methods`` on the first 96 toy-pedes images, sharded, each query's top 7 saved."""
    arguments = [argument for value in TINY_CLIP_ARGUMENTS if "clip" in methods for argument in ("--method-arg", value)]
    evaluate = ["eval", "-m", ",".join(methods), "-d", "toy-pedes", "--limit", "96", *SHARDED, *arguments]
    return [*evaluate, "--save-rankings", "7"]


def _frozen_linear_training(small_toy: Path, epochs: int) -> list[str]:
    return ["train", "-m", "frozen-linear", "-d", "cuhk-pedes", "--data-root", str(small_toy), "--epochs", str(epochs)]


def _nafs_tiny_step(small_toy: Path, tiny_bert: Path) -> list[str]:
    train = ["train", "-m", "nafs-tiny", "-d", "cuhk-pedes", "--data-root", str(small_toy), "--epochs", "1"]
    return [*train, "--max-steps", "1", "--select-on", "last", "--method-arg", f"text_encoder={tiny_bert}"]


@pytest.fixture(scope="module")
def shared_job(tmp_path_factory, small_toy, tiny_bert):
    """The commands of this module that must succeed, in one 2-process job: the re-ranking methods
    and PLOT against their authors' references, a NAFS step, a frozen-linear epoch and the
    data-parallel gradient check; and an evaluation of three methods, one of which (clip) one
    process cached beforehand."""
    import lzma

    root = tmp_path_factory.mktemp("shared-job")
    with pytest.MonkeyPatch.context() as patch:  # clip cached by one process, for the job to read
        patch.setenv("TBPS_BENCH_CACHE", str(root / "eval-cache"))
        assert main([*_toy_evaluation("clip"), "--out", str(root / "eval-one")]) == 0
    clip_entries = _feature_entries(root / "eval-cache" / "features")
    plot = root / "plot.pth"
    plot.write_bytes(lzma.decompress((FIXTURES / "plot_reference" / "plot_checkpoint.pth.xz").read_bytes()))
    plan = [
        {"name": name, "argv": [*_reference_evaluation(name), "--out", str(root / name)]}
        for name in REFERENCE_EVALUATIONS
    ]
    plan.append(
        {
            "name": "plot",
            "argv": [*_reference_evaluation("plot", plot), "--score-tile", "3", "--out", str(root / "plot")],
        }
    )
    plan.append(
        {"name": "nafs-tiny", "argv": [*_nafs_tiny_step(small_toy, tiny_bert), "--out", str(root / "nafs-tiny")]}
    )
    frozen = [*_frozen_linear_training(small_toy, 1), "--out", str(root / "frozen-linear")]
    plan.append({"name": "frozen-linear", "argv": frozen, "env": {"TBPS_BENCH_CACHE": str(root / "frozen-cache")}})
    plan.append({"name": "gradients", "script": str(HERE / "distributed" / "gradients.py"), "argv": ["1e-5"]})
    every = [*_toy_evaluation("frozen-linear", "nafs-tiny", "clip"), "--out", str(root / "eval")]
    plan.append({"name": "eval", "argv": every, "env": {"TBPS_BENCH_CACHE": str(root / "eval-cache")}})
    return SharedJob(root, plan, clip_entries)


def _feature_entries(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_evaluation_is_identical_for_one_and_two_processes_and_shares_the_cache(tmp_path, monkeypatch, shared_job):
    """A dual encoder (frozen-linear) and a pairwise method (nafs-tiny), encoded by 2 processes: metrics,
    every query's ranks and its saved top 7 equal one process's. The cache entries are the same for any
    world size and each is read by the other: the job read what one process cached for a third method
    (clip, on the committed tiny CLIP), one process reads what the job cached.

    Both encoded methods keep their pretrained MiniLM: its features are far enough apart that the
    rounding of other batch compositions (each process pads its own batches) never swaps two ranks,
    where a random tiny BERT's nearly equal features did."""
    shared_job.succeeded("eval")
    cache = shared_job.out("eval-cache")  # also holds the generated toy-pedes, whose files key the image features
    features = cache / "features"
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(cache))
    features.rename(cache / "features-two")
    evaluate_one = _toy_evaluation("frozen-linear", "nafs-tiny")
    assert main([*evaluate_one, "--out", str(tmp_path / "one")]) == 0
    one = {**results(shared_job.out("eval-one")), **results(tmp_path / "one")}
    two = results(shared_job.out("eval"))
    assert sorted(one) == sorted(two) == ["clip", "frozen-linear", "nafs-tiny"]
    assert len(list(shared_job.out("eval").glob("*/*/*.json"))) == 3  # one file per method: the first process writes
    folders = {method: shared_job.out("eval-one") if method == "clip" else tmp_path / "one" for method in one}
    for method in one:
        assert two[method]["metrics"] == one[method]["metrics"], method
        assert two[method]["per_query"] == one[method]["per_query"], method
        distributed = two[method]["provenance"]["distributed"]
        assert distributed["world_size"] == 2 and distributed["backend"] == "gloo"
        assert [r["rank"] for r in distributed["ranks"]] == [0, 1]
        assert one[method]["provenance"]["distributed"]["world_size"] == 1
        hit = method == "clip"  # read from one process's cache; the other two encoded by the job
        assert two[method]["timings"]["cache_hits"] == {"images": hit, "texts": hit}, method
        saved = [
            np.load(folder / "toy-pedes" / method / run[method]["rankings"]["file"])
            for folder, run in ((folders[method], one), (shared_job.out("eval"), two))
        ]
        assert sorted(saved[0].files) == sorted(saved[1].files)
        for key in saved[0].files:  # scores to the last bits only at equal thread counts (BLAS blocking)
            same = np.allclose if key.endswith("_score") else np.array_equal
            assert same(saved[0][key], saved[1][key], **({"rtol": 0, "atol": 1e-6} if same is np.allclose else {}))
    # the job's entries are those one process wrote (beside clip's), and one process reads them
    written_by_two = _feature_entries(cache / "features-two")
    assert _feature_entries(features) < written_by_two
    assert written_by_two - _feature_entries(features) == shared_job.clip_entries
    features.rename(cache / "features-one")
    (cache / "features-two").rename(features)
    assert main([*evaluate_one, "--out", str(tmp_path / "one-cached")]) == 0
    for method, result in results(tmp_path / "one-cached").items():
        assert result["timings"]["cache_hits"] == {"images": True, "texts": True}, method
        assert result["per_query"] == one[method]["per_query"], method


def test_data_parallel_gradient_equals_the_global_batch_gradient(shared_job):
    """BatchNorm statistics, the differentiable gather and the gradient average, with the 2 processes
    holding slices of different sizes (4 and 5) of the global batch of 9."""
    printed = shared_job.succeeded("gradients")
    assert "2 BatchNorm layers swapped for GlobalBatchNorm" in printed
    assert "worst relative gradient difference over 11 tensors" in printed


def _weights(run_folder: Path) -> dict:
    return load_file(str(run_folder / "projections.safetensors"))


def test_frozen_linear_training_with_two_processes_matches_one_and_resumes_across_world_sizes(
    tmp_path, monkeypatch, small_toy, shared_job
):
    """A FrozenBackbone method, 3 steps an epoch on a small toy: the first epoch with 2 processes
    (which encode and cache the train features), the second resumed by 1 process, gives the weights
    of 1 process straight through on the same cached features (so the 2-process epoch equals the
    1-process epoch, and its resume file is world-size free)."""
    shared_job.succeeded("frozen-linear")
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(shared_job.out("frozen-cache")))
    train = _frozen_linear_training(small_toy, 2)
    assert main([*train, "--out", str(tmp_path / "one")]) == 0
    switch = tmp_path / "switch"
    shutil.copytree(shared_job.out("frozen-linear"), switch)
    folder = "frozen-linear/cuhk-pedes/seed0"
    log = [json.loads(line) for line in (switch / folder / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1]  # one log, written once per epoch
    assert json.loads((switch / folder / "train.json").read_text())["world_size"] == 2
    assert main([*train, "--out", str(switch), "--resume"]) == 0
    alone, resumed = _weights(tmp_path / "one" / folder / "last"), _weights(switch / folder / "last")
    for name, expected in alone.items():
        assert float((resumed[name] - expected).abs().max()) <= 1e-4 * float(expected.abs().max()), name


def test_nafs_tiny_first_step_losses_match_one_process(tmp_path, tiny_bert, small_toy, shared_job):
    """BatchNorm layers in the ResNet trunk (GlobalBatchNorm) and NAFS's batch-level losses; a tiny
    text encoder and a small toy, since the loop is under test."""
    shared_job.succeeded("nafs-tiny")
    assert main([*_nafs_tiny_step(small_toy, tiny_bert), "--out", str(tmp_path / "one")]) == 0
    log = "nafs-tiny/cuhk-pedes/seed0/log.jsonl"
    alone = json.loads((tmp_path / "one" / log).read_text())["losses"]
    shared = json.loads((shared_job.out("nafs-tiny") / log).read_text())["losses"]
    train = json.loads((shared_job.out("nafs-tiny") / "nafs-tiny/cuhk-pedes/seed0/train.json").read_text())
    assert train["world_size"] == 2
    assert set(alone) == set(shared) and len(alone) >= 3
    for term, value in alone.items():
        assert abs(shared[term] - value) <= 1e-5 * max(1.0, abs(value)), (term, value, shared[term])


FAILING_PLUGIN = """
import os
import torch
from tbps_bench.methods import Method
from tbps_bench.registry import register_method


@register_method("breaks-on-rank-1")
class BreaksOnRankOne(Method):
    name = "breaks-on-rank-1"
    needs_pixels = False

    def tokenize(self, captions):
        return {"length": torch.tensor([len(c) for c in captions], dtype=torch.float32)}

    def encode_images(self, batch):
        features = torch.nn.functional.one_hot(batch["pid"] % 8, 8).float()
        if os.environ.get("RANK") == "1":
            features[0, 0] = float("nan")
        return features

    def encode_texts(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 8, 8).float()
"""


def test_a_failing_process_stops_the_job_with_its_one_line_and_no_result(tmp_path):
    plugin = tmp_path / "breaks.py"
    plugin.write_text(FAILING_PLUGIN)
    started = time.monotonic()
    args = ["--plugin", str(plugin), "eval", "-m", "breaks-on-rank-1", "-d", "toy-pedes"]
    args += ["--out", str(tmp_path / "out")]
    run = torchrun([*args, *SHARDED], tmp_path / "cache")
    assert run.returncode != 0
    assert time.monotonic() - started < 120  # the other process did not wait out the collective timeout
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: rank 1/2:")]
    assert len(lines) == 1 and "returned NaN/inf features" in lines[0], run.stderr[-3000:]
    assert not list((tmp_path / "out").glob("**/*.json"))


STALLING_PLUGIN = FAILING_PLUGIN.replace("breaks-on-rank-1", "stalls-on-rank-1").replace(
    "BreaksOnRankOne", "StallsOnRankOne"
)


def test_a_collective_timeout_names_the_variable_that_sets_it(tmp_path, monkeypatch):
    """Rank 1 takes longer than the collective timeout: rank 0's one line says which variable to raise."""
    plugin = tmp_path / "stalls.py"
    plugin.write_text(STALLING_PLUGIN.replace('float("nan")', "__import__('time').sleep(20) or 0.0"))
    monkeypatch.setenv("TBPS_BENCH_COLLECTIVE_TIMEOUT_S", "3")
    args = [
        "--plugin",
        str(plugin),
        "eval",
        "-m",
        "stalls-on-rank-1",
        "-d",
        "toy-pedes",
        "--out",
        str(tmp_path / "out"),
    ]
    run = torchrun([*args, *SHARDED], tmp_path / "cache")
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: rank 0/2:")]
    assert len(lines) == 1 and "TBPS_BENCH_COLLECTIVE_TIMEOUT_S = 3 s" in lines[0], run.stderr[-3000:]
    assert not list((tmp_path / "out").glob("**/*.json"))


def test_ctrl_c_stops_every_process(tmp_path):
    plugin, marker = FIXTURES / "slow_plugin.py", tmp_path / "started"
    args = ["--plugin", str(plugin), "eval", "-m", "slow", "-d", "toy-pedes", "--out", str(tmp_path / "out")]
    command, env = launch(args, tmp_path / "cache")
    env["SLOW_PLUGIN_MARKER"] = str(marker)
    job = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and job.poll() is None, "the job never started encoding"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole process group
    try:
        _, stderr = job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail("the job was still running 60 s after Ctrl-C")
    assert job.returncode != 0
    assert "interrupted (Ctrl-C)" in stderr
    survivors = subprocess.run(["pgrep", "-g", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert not survivors, f"processes left after Ctrl-C: {survivors}"
    assert not list((tmp_path / "out").glob("**/*.json"))


@pytest.mark.parametrize(
    ("method", "expected"), [("rasa", "t2i_first_hit_rank"), ("aptm", ("first_hit_rank", "t2i_w4"))]
)
def test_shortlist_re_ranking_is_identical_for_one_and_two_processes(
    tmp_path, monkeypatch, method, expected, shared_job
):
    """The pair batches split between the processes, the same ranks as one process and the authors'."""
    shared_job.succeeded(method)
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path / "cache"))
    assert main([*_reference_evaluation(method), "--out", str(tmp_path / "one")]) == 0
    one, two = results(tmp_path / "one")[method], results(shared_job.out(method))[method]
    assert two["per_query"] == one["per_query"] and two["metrics"] == one["metrics"]
    assert two["provenance"]["distributed"]["world_size"] == 2
    summary = json.loads((FIXTURES / f"{method}_reference" / "summary.json").read_text())
    reference = summary[expected] if isinstance(expected, str) else summary[expected[0]][expected[1]]
    assert two["per_query"]["t2i_first_hit_rank"] == reference


def test_plot_pairwise_scoring_is_identical_for_one_and_two_processes(shared_job):
    """PLOT's blockwise pair scores, sharded over two processes in tiles of 3 images: the authors'
    ranks in both directions."""
    import torch

    shared_job.succeeded("plot")
    two = results(shared_job.out("plot"))["plot"]
    reference = torch.load(FIXTURES / "plot_reference" / "reference.pt", weights_only=True)["first_hit_rank"]
    assert two["provenance"]["distributed"]["world_size"] == 2
    for direction in ("t2i", "i2t"):
        assert two["per_query"][f"{direction}_first_hit_rank"] == reference[direction]
