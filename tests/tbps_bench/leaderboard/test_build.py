"""Leaderboards: grouping, statistics, reported rows, determinism, --check and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.leaderboard.runs import load_runs
from tbps_bench.metrics import evaluate_scores
from tbps_bench.results import build_result, write_result

REPORTED = """
[[rows]]
method = "Paper method"
venue = "CVPR 2099"
reproduced_by = "mine"
citation = "Somebody et al., Table 1"
t2i = { R1 = 40.0, R5 = 60.0 }
"""


def _result(
    out: Path,
    method: str,
    seed: int,
    *,
    dataset="toy",
    trained_on=None,
    limit=None,
    dirty=False,
    noise=1.0,
    training=None,
    checkpoint=None,
    arguments=None,
):
    """A real result file from scores with an id structure, as the harness writes it."""
    generator = torch.Generator().manual_seed(seed)
    image_ids, text_ids = torch.arange(20) // 2, torch.arange(40) // 4
    scores = (text_ids[:, None] == image_ids[None, :]).float() + noise * torch.randn(40, 20, generator=generator)
    retrieval = evaluate_scores(scores, text_ids, image_ids)
    result = build_result(
        run_id=f"2026{seed:04d}-{method}",
        method={
            "name": method,
            "arguments": arguments if arguments is not None else ({"seed": seed} if training is None else {}),
            "trained_on": trained_on,
            "checkpoint": {"file": checkpoint, "sha256": checkpoint.encode().hex()[:16] + "cd" * 24}
            if checkpoint
            else (None if training is None else {"file": "best", "sha256": f"{seed:08d}" + "ab" * 28}),
            "training": training,
        },
        dataset={"name": dataset, "split": "test", "limit": limit},
        retrieval=retrieval,
        scoring="cosine",
        timings={},
        provenance={"package_version": "0.1.0", "git": {"commit": "abcdef0123", "dirty": dirty}, "seed": seed},
        partial=limit is not None,
        protocol_extra={"rerank": "none"},
    )
    return write_result(out, result)


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    for seed in (1, 2, 3):
        _result(out, "mine", seed)
    _result(out, "other", 1, noise=3.0, dirty=True)
    _result(out, "mine", 9, dataset="toy2", trained_on="toy")  # cross-domain on toy2
    _result(out, "mine", 7, limit=5)  # partial: left out
    reported = tmp_path / "reported"
    reported.mkdir()
    (reported / "toy.toml").write_text(REPORTED)
    return out, reported


def _build(tmp_path, results, *extra):
    out, reported = results
    args = ["leaderboard", "build", "--results", str(out), "--out", str(tmp_path / "lb"), "--reported", str(reported)]
    return main([*args, *extra])


def test_runs_are_grouped_and_aggregated(results):
    configs, left_out = load_runs(results[0], skip_invalid=False)
    assert left_out == {"partial": 1, "invalid": 0, "duplicate": 0}
    mine = next(c for c in configs if c.method == "mine" and c.dataset == "toy")
    assert len(mine.runs) == 3  # seeds are runs of one configuration
    values = [run["metrics"]["t2i"]["R1"] for run in mine.runs]
    mean, std = mine.metric("t2i", "R1")
    assert mean == pytest.approx(sum(values) / 3)
    assert std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    low, high = mine.recall_at_1_interval("t2i")
    assert low <= mean <= high and 0 <= low < high <= 100
    assert mine.cmc("t2i")[0] == pytest.approx(mean) and mine.cmc("t2i")[-1] == 100.0


def test_pages_tables_and_marks(tmp_path, results):
    assert _build(tmp_path, results) == 0
    page = (tmp_path / "lb" / "toy.md").read_text()
    assert "### Text-to-image, in-domain" in page and "### Image-to-text, in-domain" in page
    assert "*Paper method* (CVPR 2099) *reported*" in page and "*Somebody et al., Table 1*" in page
    mine_line = next(line for line in page.splitlines() if line.startswith("| mine |"))
    mean = float(mine_line.split("|")[2].split("±")[0])
    assert f"{mean - 40.0:+.2f} vs Paper method" in mine_line
    assert "| 3 |" in mine_line
    assert "| other † |" in page  # dirty checkout marked
    cross = (tmp_path / "lb" / "toy2.md").read_text()
    assert "cross-domain" in cross and "in-domain" not in cross.split("## test")[1]
    assert (tmp_path / "lb" / "toy-test-t2i-cmc.png").stat().st_size > 1000
    assert "[toy](toy.md)" in (tmp_path / "lb" / "README.md").read_text()
    # t2i rows sorted by R@1, descending
    order = [
        float(line.split("|")[2].split("±")[0])
        for line in page.split("### Image-to-text")[0].splitlines()
        if line.startswith("| ") and "---" not in line and "method" not in line
    ]
    assert order == sorted(order, reverse=True)


def test_csv_beside_each_page_holds_the_same_numbers(tmp_path, results):
    import pandas as pd

    assert _build(tmp_path, results) == 0
    frame = pd.read_csv(tmp_path / "lb" / "toy.csv")
    mine = frame[(frame["method"] == "mine") & (frame["direction"] == "t2i")].iloc[0]
    configs, _ = load_runs(results[0], skip_invalid=False)
    config = next(c for c in configs if c.method == "mine" and c.dataset == "toy")
    mean, std = config.metric("t2i", "R1")
    assert (
        mine["runs"] == 3
        and mine["R1"] == pytest.approx(mean, abs=1e-4)
        and mine["R1_std"] == pytest.approx(std, abs=1e-4)
    )
    reported = frame[frame["source"] == "Somebody et al., Table 1"]
    assert list(reported["R1"]) == [40.0]
    assert set(frame[frame["split"] == "test"]["domain"]) == {"in-domain"}
    assert set(pd.read_csv(tmp_path / "lb" / "toy2.csv")["domain"]) == {"cross-domain"}


def test_build_is_deterministic_and_check_detects_staleness(tmp_path, results, capsys):
    assert _build(tmp_path, results) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "lb").iterdir() if p.is_file()}
    assert _build(tmp_path, results) == 0
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "lb").iterdir() if p.is_file()}
    assert _build(tmp_path, results, "--check") == 0
    _result(results[0], "newcomer", 1)
    assert _build(tmp_path, results, "--check") == 1
    assert "stale leaderboard files" in capsys.readouterr().err
    assert (tmp_path / "lb" / "toy.md").read_bytes() == first["toy.md"]  # --check writes nothing


def test_invalid_result_files(tmp_path, results, capsys):
    bad = results[0] / "toy" / "mine" / "broken.json"
    data = json.loads(next((results[0] / "toy" / "mine").glob("*.json")).read_text())
    data["metrics"]["t2i"]["R1"] = 140.0
    bad.write_text(json.dumps(data))
    assert _build(tmp_path, results) == 2
    err = capsys.readouterr().err
    assert "broken.json" in err and "metrics.t2i.R1" in err and "--skip-invalid" in err
    assert not (tmp_path / "lb").exists() or not list((tmp_path / "lb").glob("*.md"))
    assert _build(tmp_path, results, "--skip-invalid") == 0
    assert "skipped:" in capsys.readouterr().err


def test_reported_rows_need_a_citation(tmp_path, results, capsys):
    (results[1] / "toy.toml").write_text('[[rows]]\nmethod = "X"\nt2i = { R1 = 1.0 }\n')
    assert _build(tmp_path, results) == 2
    assert "'citation' is required" in capsys.readouterr().err


def test_training_seeds_are_runs_of_one_configuration(tmp_path):
    out = tmp_path / "results"
    schedule = {"dataset": "toy", "selected_on": "val", "schedule": {"epochs": 3}}
    for seed in (1, 2):
        _result(out, "trained", seed, trained_on="toy", training={**schedule, "seed": seed, "epoch": 1 + seed})
    _result(out, "trained", 3, trained_on="toy", training={**schedule, "schedule": {"epochs": 9}, "seed": 3})
    configs, _ = load_runs(out, skip_invalid=False)
    assert sorted(len(c.runs) for c in configs) == [1, 2]
    pair = next(c for c in configs if len(c.runs) == 2)
    assert pair.checkpoints() == ["00000001", "00000002"]


def test_external_checkpoints_by_their_training_label(tmp_path):
    """Labelled external weights go in-domain or cross-domain; unlabelled ones get their own table, and
    only a configuration with the row's arguments is compared with a published row."""
    out, reported = tmp_path / "results", tmp_path / "reported"
    reported.mkdir()
    (reported / "toy.toml").write_text(
        REPORTED.replace('reproduced_by = "mine"', 'reproduced_by = "ext"\nreproduced_with = { embedding = "both" }')
    )
    _result(out, "ext", 1, checkpoint="a.pth", trained_on="toy", arguments={"embedding": "both"})
    _result(out, "ext", 2, checkpoint="b.pth", trained_on="toy", arguments={"embedding": "bge"})
    _result(out, "ext", 3, checkpoint="c.pth", trained_on="other", arguments={"embedding": "both"})
    _result(out, "ext", 4, checkpoint="d.pth", arguments={"embedding": "both"})
    configs, _ = load_runs(out, skip_invalid=False)
    assert sorted(c.domain for c in configs) == ["cross-domain", "in-domain", "in-domain", "unlabelled"]
    args = ["leaderboard", "build", "--results", str(out), "--out", str(tmp_path / "lb"), "--reported", str(reported)]
    assert main(args) == 0
    page = (tmp_path / "lb" / "toy.md").read_text()
    sections = {block.split("\n", 1)[0]: block for block in page.split("### ")[1:]}
    unlabelled = sections[
        "Text-to-image, external checkpoint, training data not labelled (pass trained_on=DATASET)\n"[:-1]
    ]
    assert "(embedding=both)" in unlabelled and "vs Paper method" not in unlabelled
    in_domain = sections["Text-to-image, in-domain"].splitlines()
    compared = [line for line in in_domain if "vs Paper method" in line]
    assert len(compared) == 1 and "embedding=both" in compared[0]
    assert "vs Paper method" not in sections["Text-to-image, cross-domain"]


def _random_result(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 0
    return next(out.rglob("*.json"))


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/b"])
@pytest.mark.parametrize("check", [False, True])
def test_a_dataset_name_that_is_a_path_is_refused_and_nothing_is_written_outside(tmp_path, capsys, name, check):
    """Result files are other people's data: their names never become paths outside --out."""
    path = _random_result(tmp_path)
    result = json.loads(path.read_text())
    result["dataset"]["name"] = name
    path.write_text(json.dumps(result))
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    out = tmp_path / "deep" / "lb"
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main([*args, *(["--check"] if check else [])]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and str(path) in errors[0] and "cannot name a leaderboard file" in errors[0]
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before
    assert not Path("/tmp/escaped.md").exists()


def test_the_build_owns_only_the_files_it_wrote(tmp_path):
    """A user's notes and figures in --out survive every build; what a build wrote and no longer
    writes is removed."""
    _random_result(tmp_path)
    out = tmp_path / "lb"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "figure.png").write_bytes(b"\x89PNG mine")
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main([*args, "--reported", str(tmp_path / "none")]) == 0
    written = set((out / ".generated-files").read_text().split())
    assert "toy-pedes.md" in written and "notes.md" not in written and "figure.png" not in written
    assert main([*args, "--reported", str(tmp_path / "none"), "--check"]) == 0  # a user's files are not stale pages
    for result in (tmp_path / "results").rglob("*.json"):
        result.unlink()
    assert main([*args, "--reported", str(tmp_path / "none")]) == 0
    assert not (out / "toy-pedes.md").exists()  # written by the build, no longer generated: removed
    assert (out / "notes.md").read_text() == "mine" and (out / "figure.png").read_bytes() == b"\x89PNG mine"


def test_a_forged_r1_is_refused_whatever_ks_says(tmp_path, capsys):
    path = _random_result(tmp_path)
    result = json.loads(path.read_text())
    result["protocol"]["ks"] = [5, 10]
    result["metrics"]["t2i"]["R1"] = 99.0
    path.write_text(json.dumps(result))
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]
    assert main(args) != 0
    assert "gives R1" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [10**400, 10**6])
def test_a_rank_beyond_the_gallery_is_one_line(tmp_path, capsys, rank):
    """A first-hit rank too large for a float, or larger than the gallery, names the field."""
    path = _random_result(tmp_path)
    result = json.loads(path.read_text())
    result["per_query"]["i2t_first_hit_rank"][0] = rank
    path.write_text(json.dumps(result))
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]
    assert main(args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "'per_query.i2t_first_hit_rank' holds a rank of" in errors[0]
    assert not (tmp_path / "lb").exists()


def test_runs_of_one_configuration_with_other_query_counts_are_named(tmp_path, capsys):
    path = _random_result(tmp_path)
    other = json.loads(path.read_text())
    other["run_id"] = "other-run"
    for direction, queries in (("t2i", "captions"), ("i2t", "images")):
        for field in ("first_hit_rank", "average_precision", "inverse_negative_penalty"):
            other["per_query"][f"{direction}_{field}"] = other["per_query"][f"{direction}_{field}"][:-1]
        other["dataset"]["counts"][queries] -= 1
    for direction in ("t2i", "i2t"):
        n = len(other["per_query"][f"{direction}_first_hit_rank"])
        ranks = other["per_query"][f"{direction}_first_hit_rank"]
        for k in (1, 5, 10):
            other["metrics"][direction][f"R{k}"] = 100.0 * sum(r <= k for r in ranks) / n
        for name, field in (("mAP", "average_precision"), ("mINP", "inverse_negative_penalty")):
            other["metrics"][direction][name] = 100.0 * math.fsum(other["per_query"][f"{direction}_{field}"]) / n
    (path.parent / "other.json").write_text(json.dumps(other))
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]
    assert main(args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "runs of one configuration rank" in errors[0] and "other.json" in errors[0]


def test_the_same_file_twice_is_one_run_and_other_dataset_copies_are_not_pooled(tmp_path):
    path = _random_result(tmp_path)
    copy = tmp_path / "results" / "again" / path.name
    copy.parent.mkdir()
    copy.write_text(path.read_text())
    configs, left_out = load_runs(tmp_path / "results", skip_invalid=False)
    assert len(configs) == 1 and len(configs[0].runs) == 1 and left_out["duplicate"] == 1
    other = json.loads(path.read_text())
    other["run_id"] = "other-run"
    other["dataset"]["annotation_sha256"] = "0" * 64  # another copy of the dataset
    (copy.parent / "other.json").write_text(json.dumps(other))
    configs, _ = load_runs(tmp_path / "results", skip_invalid=False)
    assert len(configs) == 2


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("nan", "nan"),
        ("inf", "inf"),
        ("1e30", "1e+30"),
        ("-3.0", "-3.0"),
        ("true", "True"),
        ('"high"', "'high'"),
        ("[1, 2]", "[1, 2]"),
        ("1979-05-27", "datetime.date(1979, 5, 27)"),
    ],
)
def test_reported_values_are_validated(tmp_path, capsys, value, shown):
    reported = tmp_path / "reported"
    reported.mkdir()
    (reported / "toy-pedes.toml").write_text(
        f'[[rows]]\nmethod = "X"\ncitation = "somewhere"\nt2i = {{ R1 = {value} }}\n'
    )
    args = ["leaderboard", "build", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "lb")]
    assert main([*args, "--reported", str(reported)]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "toy-pedes.toml: rows[0]: t2i.R1 = " + shown in errors[0], errors


def test_text_from_result_files_cannot_inject_markup_or_formulas(tmp_path):
    path = _random_result(tmp_path)
    result = json.loads(path.read_text())
    result["method"]["arguments"]["label"] = "=HYPERLINK(1)|x\n| fake | row <img src=x onerror=alert(1)>"
    result["method"]["trained_on"] = "toy-pedes"
    path.write_text(json.dumps(result))
    out = tmp_path / "lb"
    assert main(["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    page = (out / "toy-pedes.md").read_text()
    row = next(line for line in page.splitlines() if "HYPERLINK" in line)
    assert "<img" not in page and "&lt;img" in row and "\\| fake \\| row" in row
    assert not any(line.startswith("| fake") for line in page.splitlines())
    reported = tmp_path / "reported"
    reported.mkdir()
    (reported / "toy-pedes.toml").write_text('[[rows]]\nmethod = "=SUM(1)"\ncitation = "@x"\nt2i = { R1 = 5.0 }\n')
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main([*args, "--reported", str(reported)]) == 0
    cells = [cell for line in (out / "toy-pedes.csv").read_text().splitlines() for cell in line.split(",")]
    assert "'=SUM(1)" in cells and "'@x" in cells and "=SUM(1)" not in cells
    # the web page is not a spreadsheet: it shows the names as written (escaped as HTML)
    web = (out / "toy-pedes.html").read_text()
    assert '<td class="method">=SUM(1)</td>' in web and "'=SUM(1)" not in web
