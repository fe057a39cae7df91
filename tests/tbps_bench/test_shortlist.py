"""The shortlist re-ranking protocol (``tbps_bench.shortlist``) against a per-query brute force of
the authors' loop: top k by first-stage cosine, pair scores there, the fill value elsewhere."""

from __future__ import annotations

import pytest
import torch

from tbps_bench.errors import BenchError
from tbps_bench.methods import FillRule, ShortlistMethod
from tbps_bench.metrics.definition import brute_force
from tbps_bench.shortlist import evaluate_shortlisted


class BilinearRerank(ShortlistMethod):
    """A toy cross-encoder: the pair score is a bilinear form of two other features, and every call
    records what the harness handed it."""

    name = "bilinear"
    reads_checkpoint = False
    second_stage = "bilinear"

    def __init__(self, weight: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight
        self.calls: list[tuple[int, int]] = []

    def score_pairs(self, images, texts, pair_image):
        assert bool((pair_image[1:] >= pair_image[:-1]).all()), "pairs grouped by image"
        assert len(torch.unique(pair_image)) == len(images["detail"]), "each distinct image once"
        self.calls.append((len(images["detail"]), len(pair_image)))
        return ((texts["detail"] @ self.weight) * images["detail"][pair_image]).sum(1)


def _problem(n_ids=9, per_id=2, captions=2, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    image_pids = torch.arange(n_ids).repeat_interleave(per_id)
    caption_pids = image_pids.repeat_interleave(captions)
    centres = torch.randn(n_ids, dim, generator=g)
    images = {
        "embedding": centres[image_pids] + torch.randn(len(image_pids), dim, generator=g),
        "detail": torch.randn(len(image_pids), 5, generator=g),
    }
    texts = {
        "embedding": centres[caption_pids] + torch.randn(len(caption_pids), dim, generator=g),
        "detail": torch.randn(len(caption_pids), 5, generator=g),
    }
    return images, texts, caption_pids, image_pids, torch.randn(5, 5, generator=g)


def _authors_matrix(queries, gallery, pair_score, k, fill):
    """The authors' loop, one query at a time: -100 (or the first stage below the shortlist) outside
    the top k."""
    unit = torch.nn.functional.normalize
    sims = unit(queries["embedding"], dim=1) @ unit(gallery["embedding"], dim=1).T
    out = torch.empty_like(sims)
    for q in range(len(sims)):
        order = sorted(range(sims.shape[1]), key=lambda g: (-float(sims[q, g]), g))[:k]
        if fill is FillRule.AUTHORS:
            out[q] = -100.0
            for g in order:
                out[q, g] = pair_score(q, g)
        else:  # the shortlist above everything, in second-stage order; the rest by first stage
            out[q] = sims[q]
            ranked = sorted(order, key=lambda g: (-float(pair_score(q, g)), g))
            for position, g in enumerate(ranked):
                out[q, g] = 10.0 + k - position
    return out


@pytest.mark.parametrize("fill", list(FillRule))
@pytest.mark.parametrize("k", [1, 3, 7])
def test_both_directions_equal_the_per_query_loop(fill, k):
    images, texts, caption_pids, image_pids, weight = _problem()
    method = BilinearRerank(weight, k=k, fill=fill.value)
    result, effective = evaluate_shortlisted(method, images, texts, caption_pids, image_pids, pair_batch=5)
    assert effective == {"t2i": k, "i2t": k}

    def score(t, i):
        return float((texts["detail"][t] @ weight) @ images["detail"][i])

    t2i = _authors_matrix(texts, images, score, k, fill)
    i2t = _authors_matrix(images, texts, lambda i, t: score(t, i), k, fill)
    for mine, matrix, qid, gid in (
        (result.t2i, t2i, caption_pids, image_pids),
        (result.i2t, i2t, image_pids, caption_pids),
    ):
        expected = brute_force(matrix, qid, gid)
        assert mine.first_hit_rank.tolist() == expected["first"]
        assert torch.allclose(mine.average_precision, torch.tensor(expected["ap"], dtype=torch.float64))
        assert torch.allclose(mine.inverse_negative_penalty, torch.tensor(expected["inp"], dtype=torch.float64))


def test_the_fill_rule_changes_ranks_beyond_the_shortlist_only():
    images, texts, caption_pids, image_pids, weight = _problem(seed=3)
    runs = {
        fill: evaluate_shortlisted(
            BilinearRerank(weight, k=2, fill=fill.value), images, texts, caption_pids, image_pids
        )[0]
        for fill in FillRule
    }
    authors, first = runs[FillRule.AUTHORS].t2i.first_hit_rank, runs[FillRule.FIRST_STAGE].t2i.first_hit_rank
    assert torch.equal(authors[authors <= 2], first[authors <= 2])
    assert not torch.equal(authors, first)  # beyond k the first stage orders what the authors tie


def test_every_pair_is_scored_once_in_batches_grouped_by_image():
    images, texts, caption_pids, image_pids, weight = _problem()
    method = BilinearRerank(weight, k=4)
    evaluate_shortlisted(method, images, texts, caption_pids, image_pids, pair_batch=16)
    pairs = sum(p for _, p in method.calls)
    assert all(p <= 16 for _, p in method.calls)
    t2i_pairs, i2t_pairs = len(caption_pids) * 4, len(image_pids) * 4
    assert max(t2i_pairs, i2t_pairs) <= pairs < t2i_pairs + i2t_pairs  # the two directions share pairs
    assert sum(u for u, _ in method.calls) < pairs  # per-image work is shared by the image's pairs


def test_a_shortlist_larger_than_the_gallery_is_the_whole_gallery(capsys):
    images, texts, caption_pids, image_pids, weight = _problem(n_ids=3)
    big = evaluate_shortlisted(BilinearRerank(weight, k=500), images, texts, caption_pids, image_pids)
    assert big[1] == {"t2i": len(image_pids), "i2t": len(caption_pids)}
    assert "larger than the gallery" in capsys.readouterr().err
    whole = evaluate_shortlisted(BilinearRerank(weight, k=len(caption_pids)), images, texts, caption_pids, image_pids)
    assert torch.equal(big[0].i2t.first_hit_rank, whole[0].i2t.first_hit_rank)


@pytest.mark.parametrize(
    ("options", "message"), [({"k": 0}, "shortlist size"), ({"k": 2.5}, "integer"), ({"fill": "ties"}, "fill must be")]
)
def test_bad_protocol_options_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        BilinearRerank(torch.eye(5), **options)


def test_non_finite_pair_scores_are_refused():
    images, texts, caption_pids, image_pids, weight = _problem()
    weight[0, 0] = float("nan")
    with pytest.raises(BenchError, match="NaN/inf"):
        evaluate_shortlisted(BilinearRerank(weight, k=2), images, texts, caption_pids, image_pids)
