"""``tbps-bench eval``: bad arguments stop before any work, one method's crash spares the others,
Ctrl-C writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tbps_bench.arguments import parse_method_args
from tbps_bench.cli import main

from paths import FIXTURES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "random", "--method-arg", "dimm=128"], "method 'random' has no argument 'dimm'; did you mean 'dim'?"),
        (["-m", ","], "-m/--methods ',' names no method"),
        (["-m", "random", "--workers", "-1"], "--workers must be >= 0"),
        (["-m", "random", "--checkpoint", "best.pth"], "method 'random' reads no checkpoint"),
        (["-m", "random,oracle", "--method-arg", "seed=1"], "method 'oracle' has no argument 'seed'"),
        # values: the declared type, then the method's own ranges and choices
        (["-m", "random", "--method-arg", "dim=-1"], "dim must be an integer >= 1; got -1"),
        (["-m", "random", "--method-arg", "dim=abc"], "method 'random' argument 'dim' must be an integer; got 'abc'"),
        (["-m", "random", "--method-arg", "dim=2.5"], "must be an integer; got 2.5"),
        (["-m", "random", "--method-arg", "seed=true"], "argument 'seed' must be an integer; got True"),
        (["-m", "random,frozen-linear", "--method-arg", "dim=0"], "dim must be an integer >= 1; got 0"),
        (["-m", "rde", "--method-arg", "embedding=xyz"], "embedding must be one of both, bge, tse"),
        (["-m", "rde", "--method-arg", "select_ratio=0"], "select_ratio must be a number in (0, 1]"),
        (["-m", "plot", "--method-arg", "iterations=0"], "iterations must be an integer >= 1"),
        (["-m", "rasa", "--method-arg", "k=0"], "k (the shortlist size) must be an integer >= 1"),
        (["-m", "rasa", "--method-arg", "fill=zero"], "fill must be one of authors, first-stage"),
        (["-m", "aptm", "--method-arg", "fusion_world_size=0"], "fusion_world_size must be an integer >= 1"),
        (["-m", "aptm", "--method-arg", "mean=[0.5, 0.5, 0.5]"], "give mean= and std= together"),
        (["-m", "nafs-tiny", "--method-arg", "rerank_k=abc"], "argument 'rerank_k' must be an integer"),
        (["-m", "precomputed", "--method-arg", "label=3"], "argument 'label' must be a string or null; got 3"),
        # an argument for one method only: METHOD:KEY=VALUE
        (["-m", "random", "--method-arg", "oracle:seed=1"], "is for method 'oracle', which this command does not run"),
        (["-m", "random,oracle", "--method-arg", "oracle:seed=1"], "method 'oracle' has no argument 'seed'"),
        (["-m", "random", "--method-arg", ":seed=1"], "expected KEY=VALUE, or METHOD:KEY=VALUE"),
        (["-m", "random,oracle", "--method-arg", "random:dim=0"], "dim must be an integer >= 1; got 0"),
    ],
)
def test_bad_arguments_stop_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "res"
    assert main(["eval", *args, "-d", "toy-pedes", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_an_argument_scoped_to_one_method_reaches_that_method_only(tmp_path):
    """``random:dim=8`` goes to random and not to oracle, which has no ``dim`` (a shared ``dim=8``
    stops the command: see above)."""
    args = ["eval", "-m", "random,oracle", "-d", "toy-pedes", "--limit", "8", "--out", str(tmp_path)]
    args += ["--method-arg", "random:dim=8", "--method-arg", "random:seed=3"]
    assert main(args) == 0
    arguments = {p.parent.name: json.loads(p.read_text())["method"]["arguments"] for p in tmp_path.rglob("*.json")}
    assert arguments["random"] == {"seed": 3, "dim": 8} and "dim" not in arguments["oracle"]


def test_a_scoped_value_wins_over_the_shared_one_for_its_method():
    parsed = parse_method_args(["dim=16", "random:dim=8", "text_encoder=/m:x"], ["random", "frozen-linear"])
    assert parsed.for_method("random") == {"dim": 8, "text_encoder": "/m:x"}
    assert parsed.for_method("frozen-linear") == {"dim": 16, "text_encoder": "/m:x"}


def test_out_that_is_a_file_stops_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "results.json"
    blocker.write_text("{}")
    for out in (blocker, blocker / "sub"):
        assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 2
        assert "is a file; expected a folder" in capsys.readouterr().err
    assert blocker.read_text() == "{}"


def test_one_methods_crash_does_not_stop_the_others(tmp_path, capsys):
    plugin = tmp_path / "crash.py"
    plugin.write_text(
        "from tbps_bench.methods import Method\nfrom tbps_bench.registry import register_method\n"
        "@register_method('crash')\nclass Crash(Method):\n    needs_pixels = False\n"
        "    def encode_images(self, batch):\n        raise RuntimeError('boom\\nsecond line')\n"
    )
    out = tmp_path / "res"
    args = ["--plugin", str(plugin), "eval", "-m", "crash,oracle", "-d", "toy-pedes", "--limit", "8", "--out", str(out)]
    assert main(args) == 1
    assert "error: crash on toy-pedes: RuntimeError: boom second line" in capsys.readouterr().err
    assert [p.parent.name for p in out.rglob("*.json")] == ["oracle"]


def test_ctrl_c_stops_with_130_and_writes_nothing(tmp_path):
    import signal
    import time

    plugin, marker = FIXTURES / "slow_plugin.py", tmp_path / "started"
    out = tmp_path / "res"
    env = {**__import__("os").environ, "PYTHONSAFEPATH": "1", "SLOW_PLUGIN_MARKER": str(marker)}
    command = [sys.executable, "-m", "tbps_bench", "--plugin", str(plugin), "eval", "-m", "slow", "-d", "toy-pedes"]
    child = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():  # interrupted in the middle of encoding
        assert time.monotonic() < deadline and child.poll() is None, "the evaluation never started encoding"
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    assert "interrupted (Ctrl-C)" in err
    assert not out.exists() or not list(out.rglob("*.json"))


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]


def test_eval_oracle_scores_100_and_random_is_chance(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", "-m", "oracle,random", "-d", "toy-pedes", "--out", str(out), "--device", "cpu"]) == 0
    results = {r["method"]["name"]: r for r in _results(out)}
    assert set(results) == {"oracle", "random"}
    assert all(v == 100.0 for d in results["oracle"]["metrics"].values() for v in d.values())
    assert results["random"]["metrics"]["t2i"]["R1"] < 20.0
    table = capsys.readouterr().out
    assert "oracle @ toy-pedes/test" in table


def test_result_file_records_everything_and_is_strict_json(tmp_path):
    out = tmp_path / "results"
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out), "--method-arg", "seed=3"]) == 0
    (path,) = sorted(out.rglob("*.json"))
    text = path.read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert result["schema_version"] == 2 and result["status"] == "complete"
    assert result["method"]["arguments"] == {"seed": 3, "dim": 64}
    assert result["method"]["origin"] == "builtin"
    assert result["dataset"]["counts"] == {"ids": 50, "images": 200, "captions": 400}
    assert len(result["dataset"]["annotation_sha256"]) == 64
    assert result["protocol"]["tie_policy"] == "stable-by-gallery-index"
    assert result["protocol"]["directions"] == ["t2i", "i2t"] and result["protocol"]["ks"] == [1, 5, 10]
    for field in ("first_hit_rank", "average_precision", "inverse_negative_penalty"):
        assert len(result["per_query"][f"t2i_{field}"]) == 400 and len(result["per_query"][f"i2t_{field}"]) == 200
    provenance = result["provenance"]
    assert {"package_version", "git", "python", "libraries", "device", "hardware", "seed", "argv"} <= set(provenance)
    assert "--out" in provenance["argv"]
    assert str(tmp_path) not in text and "/root" not in text and "/home" not in text
    assert not list(out.rglob("*.tmp"))


def test_limit_marks_the_result_partial(tmp_path):
    out = tmp_path / "results"
    assert main(["eval", "-m", "oracle", "-d", "toy-pedes", "--out", str(out), "--limit", "40"]) == 0
    (result,) = _results(out)
    assert result["status"] == "partial" and result["dataset"]["counts"]["images"] == 40


def test_an_unknown_method_stops_the_command_before_any_work(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", "-m", "oracle,oracel", "-d", "toy-pedes", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'oracel'; did you mean 'oracle'?" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ("toy-pedes,toy-pedz", "unknown dataset 'toy-pedz'; did you mean 'toy-pedes'"),
        ("toy-pedes,cuhk-pedes", "dataset 'cuhk-pedes' needs --data-root"),
    ],
)
def test_a_dataset_that_cannot_be_found_stops_the_command_before_any_work(tmp_path, capsys, datasets, message):
    out = tmp_path / "results"
    assert main(["eval", "-m", "random", "-d", datasets, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()  # toy-pedes, named first, was not evaluated either
