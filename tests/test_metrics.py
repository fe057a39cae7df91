import math

import pytest
import torch

from tbps_bench import BenchError, evaluate_embeddings, evaluate_scores
from tbps_bench.metrics import kernel, tuning
from tbps_bench.metrics.definition import brute_force, naive_full_argsort


def _assert_matches_brute(result, scores, text_ids, image_ids):
    for direction, matrix, qid, gid in (("t2i", scores, text_ids, image_ids), ("i2t", scores.T, image_ids, text_ids)):
        ref = brute_force(matrix, qid, gid)
        got = getattr(result, direction)
        assert got.first_hit_rank.tolist() == ref["first"], direction
        assert torch.allclose(got.average_precision, torch.tensor(ref["ap"], dtype=torch.float64)), direction
        assert torch.allclose(got.inverse_negative_penalty, torch.tensor(ref["inp"], dtype=torch.float64)), direction


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
    _assert_matches_brute(evaluate_scores(scores, text_ids, image_ids, chunk_bytes=1), scores, text_ids, image_ids)


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
    _assert_matches_brute(result, scores, text_ids, image_ids)
    huge = torch.randn(18, 12, generator=generator, dtype=torch.float64) * 1e300  # float32 would be inf
    _assert_matches_brute(evaluate_scores(huge, text_ids, image_ids), huge, text_ids, image_ids)


def test_ties_are_broken_by_gallery_index():
    generator = torch.Generator().manual_seed(3)
    image_ids = torch.arange(20) % 5
    text_ids = torch.arange(30) % 5
    scores = torch.randint(0, 3, (30, 20), generator=generator).float() / 2 - 0.5  # heavy ties, some -0.0
    scores[0, :] = 0.0
    scores[1, :] = -0.0
    result = evaluate_scores(scores, text_ids, image_ids)
    _assert_matches_brute(result, scores, text_ids, image_ids)
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


def _deep_positives_problem(seed: int = 0):
    """Positives ranked deep (most items are candidates of some positive), with exact ties."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.round(torch.randn(40, 300, generator=generator) * 4) / 4
    index = torch.randint(0, 300, (40, 6), generator=generator)
    thresholds = scores.gather(1, index)
    gallery = torch.arange(300)
    item, threshold = scores[:, None, :], thresholds[:, :, None]
    brute = ((item > threshold) | ((item == threshold) & (gallery < index[:, :, None]))).sum(-1)
    return scores, thresholds, index, brute


def test_deep_positives_take_the_binned_count_and_agree(monkeypatch):
    calls = []
    binned = kernel.count_binned
    monkeypatch.setattr(tuning, "COMPARED_POSITIVES", 0)
    monkeypatch.setattr(kernel, "count_binned", lambda *a: calls.append(1) or binned(*a))
    for seed in range(4):
        scores, thresholds, index, brute = _deep_positives_problem(seed)
        assert torch.equal(kernel.count_preceding(scores, thresholds, index).to(torch.int64), brute)
    assert len(calls) == 4


def _padded_positives(scores: torch.Tensor, positives: int, generator: torch.Generator):
    """Random positives of each row (the first always real, the others padding with 30 %
    probability, their threshold +inf), and the brute-force counts."""
    rows, items = scores.shape
    index = torch.randint(0, items, (rows, positives), generator=generator)
    valid = torch.rand(rows, positives, generator=generator) < 0.7
    valid[:, 0] = True
    thresholds = torch.where(valid, scores.gather(1, index), torch.full((rows, positives), float("inf")))
    gallery = torch.arange(items)
    item, threshold = scores[:, None, :], thresholds[:, :, None]
    brute = ((item > threshold) | ((item == threshold) & (gallery < index[:, :, None]))).sum(-1)
    return thresholds, index, valid, brute


def _count_problems(seed: int, bounds: tuple[int, int, int], variants: int = 2, trials: int = 60):
    """Random (rows x items) scores with padded positives and their brute-force counts: every
    ``variants``-th problem from the second has many exact ties; with 3 variants, every third from
    the third has all scores within a few float32 steps."""
    generator = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        rows, items, positives = (int(torch.randint(1, n, (1,), generator=generator)) for n in bounds)
        scores = torch.randn(rows, items, generator=generator)
        if trial % variants == 1:
            scores = torch.round(scores * 2) / 2  # many exact ties
        if trial % variants == 2:
            scores = 0.5 + scores * 1e-6  # all within a few float32 steps
        yield trial, scores, *_padded_positives(scores, positives, generator)


@pytest.mark.parametrize("bins", [1, 2, 7, 2048])
def test_binned_count_equals_brute_force(bins):
    """Exact ties, scores closer than a bin, a single distinct positive score, padded positives, and
    any number of bins (a few bins: most items share one with a positive)."""
    for trial, scores, thresholds, index, valid, brute in _count_problems(bins, (20, 80, 7), variants=3):
        counts = kernel.count_binned(scores, thresholds, index, bins=bins)
        assert torch.equal(counts[valid].to(torch.int64), brute[valid]), trial


@pytest.mark.parametrize("group_elements", [1, 300 * 7, 1 << 21])
@pytest.mark.parametrize("compared", [0, 8])
def test_count_is_the_same_for_any_row_group(monkeypatch, group_elements, compared):
    """Rows counted one, seven or all at a time, with either kernel, in one reused workspace."""
    monkeypatch.setattr(tuning, "COUNT_ELEMENTS", group_elements)
    monkeypatch.setattr(tuning, "COMPARED_POSITIVES", compared)
    workspace = kernel.Workspace()
    for seed in range(3):
        scores, thresholds, index, brute = _deep_positives_problem(seed)
        counts = kernel.count_preceding(scores, thresholds, index, workspace)
        assert torch.equal(counts.to(torch.int64), brute)


def test_compared_count_equals_brute_force():
    """Exact ties (counted again with the tie rule), padded positives, and positives held by another
    process (an index outside this shard's columns, before or after them)."""
    for trial, scores, thresholds, index, valid, brute in _count_problems(5, (20, 80, 7)):
        items = scores.shape[1]
        counts = kernel.count_compared(scores, thresholds, index)
        assert torch.equal(counts[valid].to(torch.int64), brute[valid]), trial
        # the same positives seen from a shard that does not hold them
        for outside in (-1, items):
            elsewhere = torch.full_like(index, outside)
            gallery = torch.arange(items)
            tie_ahead = (scores[:, None, :] == thresholds[:, :, None]) & (gallery < elsewhere[:, :, None])
            expected = ((scores[:, None, :] > thresholds[:, :, None]) | tie_ahead).sum(-1)
            counts = kernel.count_compared(scores, thresholds, elsewhere)
            assert torch.equal(counts[valid].to(torch.int64), expected[valid]), (trial, outside)


@pytest.mark.parametrize("budget", [1, 7, 1 << 22])
def test_counting_kernel_equals_brute_force_for_any_step(monkeypatch, budget):
    """Ties, padded positives and every split of the candidates into steps give the exact counts."""
    monkeypatch.setattr(tuning, "CANDIDATE_BUDGET", budget)
    for _, scores, thresholds, index, valid, brute in _count_problems(budget, (20, 50, 6)):
        candidate = scores >= thresholds.amin(dim=1, keepdim=True)
        counts = kernel.count_candidates(scores, thresholds, index, candidate)
        assert torch.equal(counts[valid].to(torch.int64), brute[valid])


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
    _assert_matches_brute(result, scores, text_ids, image_ids)


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
    _assert_matches_brute(result, scores, text_ids, image_ids)
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
    _assert_matches_brute(result, scores, text_ids, image_ids)  # the wobbled values served no rank
    positive = text_ids[:, None] == image_ids[None, :]
    assert bool((scored[positive] == 3).all()) and bool((scored[~positive] == 2).all())
