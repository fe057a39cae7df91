"""The rank-counting kernel (tbps_bench.metrics.kernel) against brute force: every strategy, step and row group."""

from __future__ import annotations

import pytest
import torch

from tbps_bench.metrics import kernel, tuning


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


def test_deep_positives_take_the_binned_count_and_agree(monkeypatch):
    calls = []
    binned = kernel.count_binned
    monkeypatch.setattr(tuning, "COMPARED_POSITIVES", 0)
    monkeypatch.setattr(kernel, "count_binned", lambda *a: calls.append(1) or binned(*a))
    for seed in range(4):
        scores, thresholds, index, brute = _deep_positives_problem(seed)
        assert torch.equal(kernel.count_preceding(scores, thresholds, index).to(torch.int64), brute)
    assert len(calls) == 4


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
