import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tbps_bench.cli import main


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


def test_rerun_uses_the_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path / "fresh-cache"))
    out = tmp_path / "results"
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 0
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 0
    first, second = _results(out)
    hits = sorted([first["timings"]["cache_hits"]["images"], second["timings"]["cache_hits"]["images"]])
    assert hits == [False, True]
    assert first["metrics"] == second["metrics"]


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


def test_plugin_files_may_come_before_or_after_the_command(tmp_path, capsys):
    for name in ("before", "after"):
        (tmp_path / f"{name}.py").write_text(
            "from tbps_bench.registry import register_method\n"
            "from tbps_models.random import RandomMethod\n"
            f"register_method('random-{name}', RandomMethod)\n"
        )
    before, after = str(tmp_path / "before.py"), str(tmp_path / "after.py")
    assert main(["--plugin", before, "list", "--plugin", after]) == 0
    listed = capsys.readouterr().out
    assert "random-before" in listed and "random-after" in listed
    assert main(["data", "info", "-d", "toy-pedes", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "missing.py" in capsys.readouterr().err


def test_list_shows_builtins_with_origin(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("oracle", "random", "cuhk-pedes", "icfg-pedes", "rstpreid", "ufine6926", "ufine3c", "toy-pedes"):
        assert name in out
    assert "builtin" in out


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tbps_bench", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "oracle" in done.stdout


def test_dirty_flag_counts_code_not_generated_leaderboards(tmp_path, monkeypatch):
    import subprocess

    import tbps_bench
    from tbps_bench.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "bench").mkdir()
    (tmp_path / "leaderboards").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "leaderboards" / "toy.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(tbps_bench, "__file__", str(tmp_path / "bench" / "__init__.py"))
    assert git_state()["dirty"] is False
    (tmp_path / "leaderboards" / "toy.md").write_text("regenerated\n")
    assert git_state()["dirty"] is False
    (tmp_path / "bench" / "__init__.py").write_text("# changed\n")
    assert git_state()["dirty"] is True
