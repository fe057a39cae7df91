"""NAFS trained by the shared loop (``tbps-bench train``, nafs-tiny on a tiny BERT and a small toy read
as cuhk-pedes): what it keeps between epochs and resumes, its frozen text encoder, its evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tbps_bench.cli import main
from tbps_bench.results import load_result

RUN = "nafs-tiny/cuhk-pedes/seed0"


@pytest.fixture(scope="module")
def smoke(tiny_bert, small_toy):
    """nafs-tiny for 2 steps an epoch, on a tiny random BERT and a small toy-pedes: the loop is under
    test, not MiniLM or the data's size."""
    base = ["train", "-m", "nafs-tiny", "-d", "cuhk-pedes", "--data-root", str(small_toy), "--max-steps", "2"]
    base += ["--device", "cpu"]
    return [*base, "--method-arg", f"text_encoder={tiny_bert}"]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _recorded_straight_run(monkeypatch, capsys, smoke, out):
    """Two epochs straight through, recording what ``prepare_epoch`` is told, what the frozen text
    encoder encodes and what the steps read: it sees exactly the captions of the steps that run,
    encodes them there, once, and the steps find every caption already encoded."""
    from tbps_models.nafs.method import NafsMethod

    announced: list[list[str]] = []
    encoded: list[list[str]] = []
    read: list[list[str]] = []
    prepare, encode, losses = NafsMethod.prepare_epoch, NafsMethod._encode_frozen, NafsMethod.training_losses
    monkeypatch.setattr(NafsMethod, "prepare_epoch", lambda self, c: announced.append(c) or prepare(self, c))
    monkeypatch.setattr(NafsMethod, "_encode_frozen", lambda self, c: encoded.append(c) or encode(self, c))
    monkeypatch.setattr(NafsMethod, "training_losses", lambda self, b: read.append(b["captions"]) or losses(self, b))
    capsys.readouterr()
    assert main([*smoke, "--epochs", "2", "--out", str(out)]) == 0
    monkeypatch.undo()
    steps = [sorted(c for batch in read[k : k + 2] for c in batch) for k in (0, 2)]
    assert len(read) == 4 and [sorted(c) for c in announced] == steps  # two steps of 32 captions an epoch
    assert [c for c in encoded if c] == [sorted(set(steps[0])), sorted(set(steps[1]) - set(steps[0]))]  # each once
    assert "frozen text encoder: 64 train captions, encoded once" in capsys.readouterr().err


def test_train_checkpoint_resume_and_evaluate(tmp_path, monkeypatch, capsys, smoke, small_toy):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _recorded_straight_run(monkeypatch, capsys, smoke, straight)
    assert main([*smoke, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main([*smoke, "--epochs", "2", "--out", str(resumed)]) == 2  # would overwrite a run
    assert "pass --resume" in capsys.readouterr().err
    assert main([*smoke, "--epochs", "2", "--out", str(resumed), "--resume"]) == 0

    run = RUN
    resume_state = torch.load(resumed / run / "resume.pt", weights_only=True)["method"]
    assert any(key.startswith("model.image_model.") for key in resume_state) and "loss.W" in resume_state
    assert not any("language_model" in key for key in resume_state)  # frozen: loaded again, not resumed
    log = [json.loads(line) for line in (resumed / run / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert all(entry["losses"]["total"] > 0 and "val" in entry for entry in log)
    # resuming gives the same weights as training straight through
    a, b = _weights(straight / run / "last"), _weights(resumed / run / "last")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)

    out = tmp_path / "results"
    checkpoint = straight / run / "best"
    evaluate = ["eval", "-m", "nafs-tiny", "-d", "cuhk-pedes", "--data-root", str(small_toy)]
    assert main([*evaluate, "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    result = load_result(next(out.rglob("*.json")))
    training = result["method"]["training"]
    assert result["method"]["trained_on"] == "cuhk-pedes"
    assert training["selected_on"] == "val" and training["max_steps_per_epoch"] == 2
    assert training["optimizer"] == {"name": "Adam", "fused": True}  # its bits differ from the per-tensor Adam's
    assert result["protocol"]["rerank"] == "none" and result["protocol"]["shortlist_k"] is None
    assert isinstance(result["protocol"]["truncated_captions"], int)
    assert result["protocol"]["scoring"] == "pairwise"

    # the val scores logged during training (frozen text encoder outputs kept between epochs) are the
    # scores a fresh process gives the same checkpoint
    logged = [json.loads(line) for line in (straight / run / "log.jsonl").read_text().splitlines()][-1]["val"]
    val_out = tmp_path / "val"
    last = straight / run / "last"
    assert main([*evaluate, "--checkpoint", str(last), "--split", "val", "--out", str(val_out)]) == 0
    fresh = load_result(next(val_out.rglob("*.json")))["metrics"]
    for direction in ("t2i", "i2t"):
        assert {k: fresh[direction][k] for k in logged[direction]} == logged[direction]
