"""``--save-rankings``: each query's top-K against a stable argsort of the same scores, for every
method type, and the same file under torchrun."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.harness import load_eval_split
from tbps_bench.rankings import TopK, block_top_k, read_rankings
from tbps_bench.results import load_result

from paths import FIXTURES


def _stable_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: a stable descending sort (ties by index), first k."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_block_top_k_keeps_the_lowest_index_among_ties(k):
    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (30, 25), generator=generator).double()  # heavy ties
    scores[0] = 1.0  # one row all tied
    values, indices = block_top_k(scores, k)
    expected_values, expected_indices = _stable_top(scores, min(k, 25))
    assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)


def test_top_k_merged_from_blocks_and_processes_equals_the_whole_sort():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (12, 40), generator=generator).double()
    whole = TopK(6, 12)
    whole.add(slice(0, 12), scores)
    by_columns, by_rows = TopK(6, 12), TopK(6, 40)
    for start in range(0, 40, 9):  # gallery shards, as processes hold them
        by_columns.add(slice(0, 12), scores[:, start : start + 9], gallery_start=start)
        by_rows.add_columns(
            slice(start, start + 9), scores[:, start : start + 9].T.contiguous().T.T, 0
        ) if False else None
    expected_values, expected_indices = _stable_top(scores, 6)
    assert torch.equal(whole.indices, expected_indices) and torch.equal(by_columns.indices, expected_indices)
    assert torch.equal(by_columns.values, expected_values)
    twice = TopK(6, 12)  # every process ranks the whole gallery: an item offered twice counts once
    twice.add(slice(0, 12), scores)
    twice._merge(slice(0, 12), whole.values, whole.indices)
    assert torch.equal(twice.indices, expected_indices)


def _check_against_first_hits(result: dict, rankings: dict, direction: str) -> None:
    """Scores descend, ties by index; the first positive in the top K sits at the first-hit rank."""
    index, score = rankings[f"{direction}_index"], rankings[f"{direction}_score"]
    query_ids = rankings["caption_ids"] if direction == "t2i" else rankings["image_ids"]
    gallery_ids = rankings["image_ids"] if direction == "t2i" else rankings["caption_ids"]
    for query, (items, values) in enumerate(zip(index, score, strict=True)):
        assert all(
            values[i] > values[i + 1] or (values[i] == values[i + 1] and items[i] < items[i + 1])
            for i in range(len(items) - 1)
        )
        rank = result["per_query"][f"{direction}_first_hit_rank"][query]
        positives = [place for place, item in enumerate(items, start=1) if gallery_ids[item] == query_ids[query]]
        if rank <= len(items):
            assert positives and positives[0] == rank, (direction, query)
        else:
            assert not positives, (direction, query)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("random", []),
        ("nafs-tiny", []),
        ("rasa", ["--checkpoint", str(FIXTURES / "rasa_reference" / "rasa_checkpoint.pth"), "--method-arg", "k=3"]),
    ],
)
def test_every_method_type_saves_rankings_that_agree_with_its_ranks(tmp_path, method, extra):
    out = tmp_path / "res"
    args = ["eval", "-m", method, "-d", "toy-pedes", "--limit", "24", "--save-rankings", "6", "--out", str(out)]
    assert main([*args, *extra]) == 0
    path = next(out.rglob("*_test.json"))
    result = load_result(path)
    file = path.with_name(result["rankings"]["file"])
    assert result["rankings"]["k"] == 6 and file.is_file()
    rankings = read_rankings(file)
    assert rankings["t2i_index"].shape == (len(rankings["captions"]), 6)
    split = load_eval_split("toy-pedes", None, "test").limited(24)
    assert list(rankings["image_files"]) == split.image_paths and list(rankings["captions"]) == split.captions
    for direction in ("t2i", "i2t"):
        _check_against_first_hits(result, rankings, direction)


def test_a_saved_score_matrix_gives_the_stable_sort_exactly(tmp_path):
    split = load_eval_split("toy-pedes", None, "test").limited(24)
    generator = torch.Generator().manual_seed(4)
    similarity = torch.randint(0, 3, (len(split.captions), len(split.image_paths)), generator=generator).double()
    scores = tmp_path / "scores.npz"
    np.savez(
        scores, similarity=similarity.numpy(), text_ids=split.caption_pids.numpy(), image_ids=split.image_pids.numpy()
    )
    out = tmp_path / "res"
    args = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--limit", "24", "--method-arg", f"file={scores}"]
    assert main([*args, "--save-rankings", "--out", str(out)]) == 0  # K 10 when omitted
    path = next(out.rglob("*_test.json"))
    rankings = read_rankings(path.with_name(load_result(path)["rankings"]["file"]))
    for direction, matrix in (("t2i", similarity), ("i2t", similarity.T)):
        values, indices = _stable_top(matrix, 10)
        assert np.array_equal(rankings[f"{direction}_index"], indices.numpy()), direction
        assert np.array_equal(rankings[f"{direction}_score"], values.numpy()), direction


def test_a_changed_rankings_file_is_refused_by_the_report(tmp_path, capsys):
    out = tmp_path / "res"
    assert (
        main(["eval", "-m", "random", "-d", "toy-pedes", "--limit", "8", "--save-rankings", "3", "--out", str(out)])
        == 0
    )
    path = next(out.rglob("*_test.json"))
    rankings = path.with_name(json.loads(path.read_text())["rankings"]["file"])
    rankings.write_bytes(rankings.read_bytes() + b"\0")
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
