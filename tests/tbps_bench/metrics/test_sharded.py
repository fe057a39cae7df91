"""Both directions from one pass over score blocks (tbps_bench.metrics.sharded)."""

from __future__ import annotations

import pytest
import torch

from tbps_bench import BenchError
from tbps_bench.metrics import tuning

from brute import assert_matches_brute_force


def _index_shards(n_text: int, n_image: int):
    """Texts and images whose only feature is an index (images offset by 1000), for scorers that look
    scores up in a table."""
    from tbps_bench.metrics import Shard

    texts = Shard.of_embeddings(torch.arange(n_text, dtype=torch.float32)[:, None], [slice(0, n_text)])
    images = Shard.of_embeddings(1000 + torch.arange(n_image, dtype=torch.float32)[:, None], [slice(0, n_image)])
    return texts, images


def _table_scorer(scores: torch.Tensor, scored: torch.Tensor, wobble_narrow_galleries: bool = False):
    """Scores of (queries x gallery) looked up in ``scores`` (texts x images), either way round,
    counting each pair scored. ``wobble_narrow_galleries``: a gallery narrower than the whole set
    gets scores one float32 step higher (a BLAS whose bits depend on the matrix shape)."""

    def score(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        q, g = queries[:, 0].long(), gallery[0].long()
        if int(q.min()) >= 1000:  # image queries over texts
            block = scores[g][:, q - 1000].T
            scored[g[:, None], (q - 1000)[None, :]] += 1
            full = scores.shape[0]
        else:
            block = scores[q][:, g - 1000]
            scored[q[:, None], (g - 1000)[None, :]] += 1
            full = scores.shape[1]
        if wobble_narrow_galleries and len(g) < full:
            block = torch.nextafter(block, torch.tensor(float("inf")))
        return block.contiguous()

    return score


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])
def test_pairwise_scoring_once_serves_both_directions(chunk_bytes):
    """An expensive scorer scores each pair once; both directions match the brute force, ties too."""
    from tbps_bench.metrics import Shard, evaluate_scored_once

    generator = torch.Generator().manual_seed(11)
    image_ids = torch.arange(37) % 6
    text_ids = torch.arange(53) % 6
    scores = torch.randint(0, 5, (53, 37), generator=generator).float() / 4  # many ties
    scored = torch.zeros(53, 37, dtype=torch.int64)

    def score_texts(texts, images):
        rows, columns = texts["index"], images["index"]
        scored[rows[:, None], columns[None, :]] += 1
        return scores[rows][:, columns]

    texts = Shard({"index": torch.arange(53)}, [slice(0, 53)])
    images = Shard({"index": torch.arange(37)}, [slice(0, 37)])
    result = evaluate_scored_once(texts, images, text_ids, image_ids, score_texts, chunk_bytes=chunk_bytes)
    assert bool((scored == 1).all())
    assert_matches_brute_force(result, scores, text_ids, image_ids)


def test_pairwise_scoring_once_checks_both_directions_before_scoring():
    from tbps_bench.metrics import Shard, evaluate_scored_once

    def never(texts, images):
        raise AssertionError("scored before the positives were checked")

    texts, images = Shard({"i": torch.arange(3)}, [slice(0, 3)]), Shard({"i": torch.arange(3)}, [slice(0, 3)])
    with pytest.raises(BenchError, match="i2t: 1 queries have no positive"):
        evaluate_scored_once(texts, images, [0, 1, 1], [0, 1, 2], never)
    skipped = evaluate_scored_once(
        texts,
        images,
        [0, 1, 1],
        [0, 1, 2],
        lambda t, i: torch.eye(3)[t["i"]][:, i["i"]],
        skip_queries_without_positives=True,
    )
    assert skipped.i2t.skipped_queries == 1 and skipped.i2t.first_hit_rank.tolist() == [1, 1]


@pytest.mark.parametrize(("chunk_bytes", "passes"), [(2**30, "one"), (37 * 13 * 8, "one, several slabs"), (1, "two")])
def test_symmetric_scores_one_pass_serves_both_directions(monkeypatch, chunk_bytes, passes):
    """Texts in chunks of 8 (slabs of 48 texts, the last one partial) or 32; every pair scored once
    in one pass, positive pairs once more before it (in groups of one text); both directions equal the brute force, ties
    included. Too little memory for a slab of image columns: two passes, each pair scored twice."""
    from tbps_bench.metrics import evaluate_sharded

    monkeypatch.setattr(tuning, "MIN_QUERY_ROWS", 4)
    monkeypatch.setattr(tuning, "QUERY_ROW_MULTIPLE", 4)
    monkeypatch.setattr(tuning, "MIN_COLUMN_SLAB", 1)
    monkeypatch.setattr(tuning, "POSITIVE_GROUP", 1)  # a group of one text meets only its positives
    generator = torch.Generator().manual_seed(5)
    text_ids, image_ids = torch.arange(53) % 6, torch.arange(37) % 6
    scores = torch.randint(0, 5, (53, 37), generator=generator).float() / 4  # many ties
    scored = torch.zeros(53, 37, dtype=torch.int64)
    texts, images = _index_shards(53, 37)
    score = _table_scorer(scores, scored)
    result = evaluate_sharded(texts, images, text_ids, image_ids, score, chunk_bytes=chunk_bytes)
    assert_matches_brute_force(result, scores, text_ids, image_ids)
    positive = text_ids[:, None] == image_ids[None, :]
    if passes == "two":
        assert bool((scored == 2).all())
    else:
        assert bool((scored[positive] == 2).all()) and bool((scored[~positive] == 1).all())


def test_positive_scores_that_differ_from_the_pass_fall_back_to_a_second_pass(monkeypatch):
    from tbps_bench.metrics import evaluate_sharded

    monkeypatch.setattr(tuning, "POSITIVE_GROUP", 1)
    generator = torch.Generator().manual_seed(6)
    text_ids, image_ids = torch.arange(53) % 6, torch.arange(37) % 6
    scores = torch.randint(0, 5, (53, 37), generator=generator).float() / 4
    scored = torch.zeros(53, 37, dtype=torch.int64)
    texts, images = _index_shards(53, 37)
    score = _table_scorer(scores, scored, wobble_narrow_galleries=True)
    result = evaluate_sharded(texts, images, text_ids, image_ids, score)
    assert_matches_brute_force(result, scores, text_ids, image_ids)  # the wobbled values served no rank
    positive = text_ids[:, None] == image_ids[None, :]
    assert bool((scored[positive] == 3).all()) and bool((scored[~positive] == 2).all())
