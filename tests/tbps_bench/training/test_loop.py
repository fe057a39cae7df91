"""The shared training loop, driven through ``tbps-bench train`` with frozen-linear (a FrozenBackbone:
its train features cached once, a few kilobytes of projections trained) on a tiny BERT and a small
toy-pedes read as cuhk-pedes: resume, selection and what a run folder may overwrite. What NAFS keeps
between epochs is tested with NAFS (tests/tbps_models/nafs/test_training.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from tbps_bench.cli import main
from tbps_bench.training import learning_rate_factor
from tbps_models.nafs.presets import RELEASED_SCHEDULE

RUN = "frozen-linear/cuhk-pedes/seed0"


@pytest.fixture(scope="module")
def smoke(tiny_bert, small_toy):
    """frozen-linear for 2 steps an epoch on a tiny random BERT: the loop is under test."""
    base = ["train", "-m", "frozen-linear", "-d", "cuhk-pedes", "--data-root", str(small_toy), "--max-steps", "2"]
    return [*base, "--device", "cpu", "--method-arg", f"text_encoder={tiny_bert}", "--method-arg", "dim=32"]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, smoke):
    """One smoke epoch (selected on val), trained once for the tests that start from a run; each test
    works on its own copy (``copied_run``)."""
    out = tmp_path_factory.mktemp("one-epoch")
    assert main([*smoke, "--epochs", "1", "--out", str(out)]) == 0
    return out


def copied_run(one_epoch, destination):
    shutil.copytree(one_epoch, destination, copy_function=shutil.copy2)
    return destination


def _weights(folder):
    return load_file(str(folder / "projections.safetensors"))


def test_resuming_gives_the_weights_of_training_straight_through(tmp_path, capsys, one_epoch, smoke):
    straight, resumed = tmp_path / "straight", copied_run(one_epoch, tmp_path / "resumed")
    assert main([*smoke, "--epochs", "2", "--out", str(straight)]) == 0
    assert main([*smoke, "--epochs", "2", "--out", str(resumed)]) == 2  # would overwrite a run
    assert "pass --resume" in capsys.readouterr().err
    assert main([*smoke, "--epochs", "2", "--out", str(resumed), "--resume"]) == 0
    log = [json.loads(line) for line in (resumed / RUN / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert all(entry["losses"]["total"] > 0 and "val" in entry for entry in log)
    a, b = _weights(straight / RUN / "last"), _weights(resumed / RUN / "last")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_released_schedule():
    factors = {e: learning_rate_factor(e, RELEASED_SCHEDULE) for e in (0, 5, 10, 19, 20, 25, 35, 59)}
    assert factors[0] == pytest.approx(0.01)
    assert factors[5] == pytest.approx(0.505)
    assert factors[10] == factors[19] == pytest.approx(1.0)
    assert factors[20] == pytest.approx(0.1)
    assert factors[25] == pytest.approx(0.01)
    assert factors[35] == factors[59] == pytest.approx(0.001)


def test_best_is_a_linked_copy_of_last_that_a_later_last_leaves_alone(tmp_path):
    from tbps_bench.fileio import atomic_dir, linked_copy_dir

    last, best = tmp_path / "last", tmp_path / "best"
    with atomic_dir(last) as tmp:
        (tmp / "model.safetensors").write_bytes(b"epoch 1 weights")
        (tmp / "text_encoder").mkdir()
        (tmp / "text_encoder" / "vocab.txt").write_text("[PAD]")
    linked_copy_dir(last, best)
    assert (best / "model.safetensors").read_bytes() == b"epoch 1 weights"
    assert (best / "text_encoder" / "vocab.txt").read_text() == "[PAD]"
    with atomic_dir(last) as tmp:  # the next epoch's checkpoint
        (tmp / "model.safetensors").write_bytes(b"epoch 2 weights")
    assert (last / "model.safetensors").read_bytes() == b"epoch 2 weights"
    assert (best / "model.safetensors").read_bytes() == b"epoch 1 weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]  # no temporary folder left


def test_selection_on_test_is_recorded(tmp_path, smoke):
    assert main([*smoke, "--epochs", "1", "--select-on", "test", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / RUN / "best/config.json").read_text())["meta"]
    assert meta["selected_on"] == "test"


def test_untrainable_method_and_bad_flags(tmp_path, capsys, smoke):
    assert main(["train", "-m", "random", "-d", "toy-pedes", "--out", str(tmp_path)]) == 2
    assert "cannot be trained" in capsys.readouterr().err
    assert main([*smoke, "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_dataset_without_val_split_suggests_a_selection(tmp_path, capsys):
    records = [
        {"split": split, "id": pid, "file_path": f"{pid}_{shot}.jpg", "captions": ["a man in a red coat"] * 2}
        for split, pids in (("train", (1, 2)), ("test", (3,)))
        for pid in pids
        for shot in range(2)
    ]
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for record in records:
        Image.new("RGB", (32, 64), 120).save(tmp_path / "imgs" / record["file_path"])
    (tmp_path / "ICFG-PEDES.json").write_text(json.dumps(records))
    args = ["train", "-m", "nafs-tiny", "-d", "icfg-pedes", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no 'val' split" in err and "--select-on last" in err


def test_a_run_without_its_resume_file_is_never_overwritten(tmp_path, capsys, one_epoch, smoke):
    out = copied_run(one_epoch, tmp_path / "runs")
    run = out / RUN
    (run / "resume.pt").unlink()  # a finished run copied without it, or a crash before it was written
    before = _weights(run / "best")
    log_before = (run / "log.jsonl").read_text()
    capsys.readouterr()
    assert main([*smoke, "--epochs", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "holds a finished or partial run (best, last, log.jsonl) without its resume file" in error
    assert "--overwrite" in error
    after = _weights(run / "best")
    assert all(bool((before[k] == after[k]).all()) for k in before)
    assert (run / "log.jsonl").read_text() == log_before
    assert main([*smoke, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert len((run / "log.jsonl").read_text().splitlines()) == 1  # replaced, not appended to


def test_resume_refuses_other_options_than_the_run_it_continues(tmp_path, capsys, one_epoch, smoke):
    out = copied_run(one_epoch, tmp_path / "runs")
    run = out / RUN
    resume_before = (run / "resume.pt").read_bytes()
    for changed, named in (
        (["--select-on", "test"], "selected_on was 'val', now 'test'"),
        (["--amp", "bf16"], "amp was 'none', now 'bf16'"),
        (["--max-steps", "3"], "max_steps_per_epoch was 2, now 3"),
    ):
        capsys.readouterr()
        assert main([*smoke, "--epochs", "2", "--out", str(out), "--resume", *changed]) == 2
        error = capsys.readouterr().err
        assert "continues a run started with other options" in error and named in error, error
        assert (run / "resume.pt").read_bytes() == resume_before
        assert len((run / "log.jsonl").read_text().splitlines()) == 1


def test_a_damaged_resume_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "nafs-tiny" / "toy-pedes" / "seed0"
    run.mkdir(parents=True)
    (run / "resume.pt").write_bytes(b"PK\x03\x04 cut short")
    args = ["train", "-m", "nafs-tiny", "-d", "toy-pedes", "--resume", "--out", str(tmp_path), "--max-steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume.pt is unreadable" in err[0] and "delete it to start over" in err[0]
