"""The one-process public metrics (evaluate_scores, evaluate_embeddings) against the argsort
definition, brute force and torchmetrics: ties, precision, chunking, CMC, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from tbps_bench import BenchError, evaluate_embeddings, evaluate_scores
from tbps_bench.metrics.definition import naive_full_argsort

from brute import assert_matches_brute_force


def test_hand_computed_case():
    # 2 texts x 4 images; text 0 (id 7) ranks images [0.9, 0.1, 0.5, 0.3] -> order 0,2,3,1
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.4]])
    text_ids = torch.tensor([7, 8])
    image_ids = torch.tensor([8, 7, 7, 8])
    result = evaluate_scores(similarity, text_ids, image_ids)
    # text 0: positives images 1 (0.1) and 2 (0.5): ranks 4 and 2 -> AP (1/2 + 2/4)/2 = 0.5, INP 2/4
    # text 1: positives images 0 (0.2) and 3 (0.4): order 1,3,0,2 -> ranks 2, 3 -> AP (1/2+2/3)/2, INP 2/3
    assert result.t2i.first_hit_rank.tolist() == [2, 2]
    assert result.t2i.average_precision.tolist() == pytest.approx([0.5, (0.5 + 2 / 3) / 2])
    assert result.t2i.inverse_negative_penalty.tolist() == pytest.approx([0.5, 2 / 3])
    summary = result.summary()["t2i"]
    assert summary["R1"] == 0.0 and summary["R5"] == 100.0
    assert summary["mAP"] == pytest.approx(100 * (0.5 + (0.5 + 2 / 3) / 2) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_random_scores(seed):
    generator = torch.Generator().manual_seed(seed)
    image_ids = torch.randint(0, 6, (23,), generator=generator)
    text_ids = image_ids[torch.randint(0, 23, (41,), generator=generator)]
    image_ids[:6] = torch.arange(6)  # every id has an image
    text_ids[:6] = torch.arange(6)  # and a caption
    scores = torch.randn(41, 23, generator=generator)
    assert_matches_brute_force(evaluate_scores(scores, text_ids, image_ids, chunk_bytes=1), scores, text_ids, image_ids)


@pytest.mark.parametrize("spread", [1e-12, 1e-300])
def test_float64_scores_keep_their_order(spread):
    """Distinct float64 scores closer than float32 can tell apart (or smaller than its range) rank
    as given, in both directions: the kernel compares them in float64."""
    generator = torch.Generator().manual_seed(5)
    image_ids = torch.arange(12) % 4
    text_ids = torch.arange(18) % 4
    scores = 0.5 + spread * torch.randn(18, 12, generator=generator, dtype=torch.float64)
    assert len(torch.unique(scores.float())) < scores.numel()  # float32 would tie them
    result = evaluate_scores(scores, text_ids, image_ids, chunk_bytes=1)
    assert_matches_brute_force(result, scores, text_ids, image_ids)
    huge = torch.randn(18, 12, generator=generator, dtype=torch.float64) * 1e300  # float32 would be inf
    assert_matches_brute_force(evaluate_scores(huge, text_ids, image_ids), huge, text_ids, image_ids)


def test_ties_are_broken_by_gallery_index():
    generator = torch.Generator().manual_seed(3)
    image_ids = torch.arange(20) % 5
    text_ids = torch.arange(30) % 5
    scores = torch.randint(0, 3, (30, 20), generator=generator).float() / 2 - 0.5  # heavy ties, some -0.0
    scores[0, :] = 0.0
    scores[1, :] = -0.0
    result = evaluate_scores(scores, text_ids, image_ids)
    assert_matches_brute_force(result, scores, text_ids, image_ids)
    assert result.tie_policy == "stable-by-gallery-index"
    # an all-equal row ranks by index: id 0's images are 0, 5, 10, 15
    assert result.t2i.first_hit_rank[0] == 1
    assert result.t2i.inverse_negative_penalty[0] == pytest.approx(4 / 16)


@pytest.mark.parametrize("chunk_bytes", [1, 300, 4096, 2**30])
def test_invariant_to_chunk_size(chunk_bytes, clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    scores = text @ image.T
    reference = evaluate_scores(scores, text_ids, image_ids, chunk_bytes=2**30)
    got = evaluate_scores(scores, text_ids, image_ids, chunk_bytes=chunk_bytes)
    for direction in ("t2i", "i2t"):
        a, b = getattr(reference, direction), getattr(got, direction)
        assert torch.equal(a.first_hit_rank, b.first_hit_rank)
        assert torch.equal(a.average_precision, b.average_precision)
        assert torch.equal(a.inverse_negative_penalty, b.inverse_negative_penalty)


def test_embedding_path_matches_naive(clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    got = evaluate_embeddings(text, image, text_ids, image_ids, chunk_bytes=5000).summary()
    naive = naive_full_argsort(text, image, text_ids, image_ids)
    for direction in ("t2i", "i2t"):
        for name, value in naive[direction].items():
            assert got[direction][name] == pytest.approx(value, abs=1e-4), (direction, name)  # naive is float32
    assert 0 < got["t2i"]["R1"] < 100  # the fixture is neither trivial nor hopeless


def test_torchmetrics_cross_check_on_positive_shifted_scores(clustered_embeddings):
    from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_hit_rate

    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    scores = text @ image.T + 2.0  # torchmetrics ignores positives scoring <= 0
    ours = evaluate_scores(scores, text_ids, image_ids).t2i
    for q in range(scores.shape[0]):
        target = image_ids == text_ids[q]
        assert float(retrieval_average_precision(scores[q], target)) == pytest.approx(
            float(ours.average_precision[q]), abs=1e-6
        )
        for k in (1, 5, 10):
            assert float(retrieval_hit_rate(scores[q], target, top_k=k)) == float(ours.first_hit_rank[q] <= k)


def test_perfect_scorer_gives_100():
    image_ids = torch.arange(12) % 4
    text_ids = torch.arange(20) % 4
    scores = (text_ids[:, None] == image_ids[None, :]).float() - 0.3
    summary = evaluate_scores(scores, text_ids, image_ids).summary()
    assert all(v == 100.0 for direction in summary.values() for v in direction.values())


def test_duality_t2i_of_transpose_is_i2t(clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    scores = text @ image.T
    forward = evaluate_scores(scores, text_ids, image_ids)
    backward = evaluate_scores(scores.T.contiguous(), image_ids, text_ids)
    assert torch.equal(forward.i2t.first_hit_rank, backward.t2i.first_hit_rank)
    assert torch.equal(forward.i2t.average_precision, backward.t2i.average_precision)
    assert torch.equal(forward.t2i.inverse_negative_penalty, backward.i2t.inverse_negative_penalty)


def test_cmc_curve_is_monotone_and_ends_at_r20(clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    result = evaluate_embeddings(text, image, text_ids, image_ids).t2i
    curve = result.cmc(20)
    assert len(curve) == 20 and curve == sorted(curve)
    assert curve[0] == result.summary()["R1"] and curve[9] == result.summary()["R10"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda s, t, i: (s.index_fill(0, torch.tensor([3]), math.nan), t, i),
            "NaN or inf: 40 entries, first at flat index 120",
        ),
        (lambda s, t, i: (s, t[:-1], i), "text_ids has 59 entries but there are 60 texts"),
        (lambda s, t, i: (s, t, i.float()), "image_ids must hold integer person ids"),
        (lambda s, t, i: (s[:0], t[:0], i), "similarity is empty"),
        (lambda s, t, i: (s, t.index_fill(0, torch.tensor([5]), 999), i), "1 queries have no positive"),
    ],
)
def test_bad_input_is_one_clear_error(build, message, clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(n_ids=10, per_id=4, captions_per_image=1)
    # 60 texts x 40 images
    scores, tid, iid = build(text.repeat(2, 1)[:60] @ image.T, text_ids.repeat(2)[:60], image_ids)
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        evaluate_scores(scores, tid, iid)


def test_skipping_queries_without_positive_is_recorded():
    scores = torch.randn(5, 4)
    text_ids = torch.tensor([0, 1, 9, 0, 1])
    image_ids = torch.tensor([0, 1, 0, 1])
    result = evaluate_scores(scores, text_ids, image_ids, skip_queries_without_positives=True)
    assert result.t2i.skipped_queries == 1 and result.t2i.first_hit_rank.numel() == 4


def test_embedding_dimension_mismatch_is_named():
    with pytest.raises(BenchError, match="text_embeddings has dim 8, image_embeddings has dim 4"):
        evaluate_embeddings(torch.randn(3, 8), torch.randn(3, 4), [0, 1, 2], [0, 1, 2])
