"""Result files from other people: one that contradicts itself is named with the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.results import build_result, write_result


def _result_file(tmp_path: Path) -> Path:
    from tbps_bench.metrics import evaluate_scores

    text_ids, image_ids = torch.arange(12) // 2, torch.arange(6)
    scores = (text_ids[:, None] == image_ids[None, :]).float() + torch.randn(
        12, 6, generator=torch.Generator().manual_seed(0)
    )
    result = build_result(
        run_id="20260101T000000-aaaaaa",
        method={"name": "mine", "arguments": {}, "trained_on": None, "checkpoint": None, "training": None},
        dataset={"name": "toy", "split": "test", "limit": None, "counts": {"ids": 6, "images": 6, "captions": 12}},
        retrieval=evaluate_scores(scores, text_ids, image_ids),
        scoring="cosine",
        timings={},
        provenance={"git": {}},
        partial=False,
    )
    return write_result(tmp_path / "results", result)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda r: r["per_query"]["t2i_first_hit_rank"].__setitem__(slice(None), [1] * 12), "gives R1 = 100.000000"),
        (lambda r: r["per_query"]["t2i_first_hit_rank"].pop(), "has 11 queries; the result counts 12"),
        (lambda r: r["per_query"]["i2t_first_hit_rank"].__setitem__(0, 0), "must hold integer ranks >= 1"),
        (lambda r: r["per_query"].__setitem__("i2t_first_hit_rank", "1,2,3"), "is missing or empty"),
        (lambda r: r["per_query"]["t2i_average_precision"].__setitem__(0, 0.0), "gives mAP"),
        (lambda r: r["metrics"]["i2t"].__setitem__("mINP", 1.0), "'metrics.i2t.mINP' is 1.0"),
    ],
)
def test_a_result_that_contradicts_itself_is_named_with_the_field(tmp_path, capsys, tamper, message):
    path = _result_file(tmp_path)
    result = json.loads(path.read_text())
    tamper(result)
    path.write_text(json.dumps(result))
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
