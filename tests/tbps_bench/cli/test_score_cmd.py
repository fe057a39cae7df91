"""``tbps-bench score``: what a scores file is, and queries without positives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tbps_bench.cli import main


def test_score_names_what_the_file_is(tmp_path, capsys):
    npy, zeros = tmp_path / "scores.npy", tmp_path / "scores.npz"
    np.save(npy, np.zeros((2, 2)))
    zeros.write_bytes(bytes(256))
    assert main(["score", str(npy)]) == 2
    assert "is a .npy file (one array); expected a .npz archive" in capsys.readouterr().err
    assert main(["score", str(zeros)]) == 2
    err = capsys.readouterr().err
    assert "is not a .npz archive (a zip file): it is zero-filled" in err and "pickled" not in err


def test_queries_without_positives_name_the_command_line_flag(tmp_path, capsys):
    path = tmp_path / "s.npz"
    np.savez(path, similarity=np.random.rand(3, 2), text_ids=np.array([0, 1, 9]), image_ids=np.array([0, 1]))
    assert main(["score", str(path)]) == 2
    assert "--skip-queries-without-positives" in capsys.readouterr().err
    assert main(["score", str(path), "--skip-queries-without-positives", "--json"]) == 0
    assert "skipped" in capsys.readouterr().err


def _npz(path: Path, similarity, text_ids, image_ids) -> Path:
    np.savez(path, similarity=similarity, text_ids=text_ids, image_ids=image_ids)
    return path


def test_score_json_matches_python_api(tmp_path, capsys, clustered_embeddings):
    from tbps_bench import evaluate_scores

    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    scores = (text @ image.T).numpy()
    path = _npz(tmp_path / "s.npz", scores, text_ids.numpy(), image_ids.numpy())
    assert main(["score", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate_scores(torch.from_numpy(scores), text_ids, image_ids).summary()
    assert printed == expected
    assert set(printed["t2i"]) == {"R1", "R5", "R10", "mAP", "mINP"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage", "is not a .npz archive (a zip file): it is a file starting with b'not '"),
        ("missing", "missing array(s) image_ids"),
        ("nan", "similarity contains NaN or inf: 1 entry, first at flat index 5"),
        ("shape", "image_ids has 3 entries but there are 4 images"),
    ],
)
def test_score_bad_input_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.npz"
    similarity = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    if content == "garbage":
        path.write_bytes(b"not a zip")
    elif content == "missing":
        np.savez(path, similarity=similarity, text_ids=np.arange(3))
    elif content == "nan":
        similarity[1, 1] = np.nan
        _npz(path, similarity, np.arange(3), np.arange(4) % 3)
    else:
        _npz(path, similarity, np.arange(3), np.arange(3))
    assert main(["score", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
