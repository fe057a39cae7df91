"""``tbps-bench score``: what a scores file is, and queries without positives."""

from __future__ import annotations

import numpy as np

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
