"""A retrieval result checked against the plain argsort definition, in both directions."""

from __future__ import annotations

import torch

from tbps_bench.metrics.definition import brute_force


def assert_matches_brute_force(result, scores, text_ids, image_ids):
    for direction, matrix, qid, gid in (("t2i", scores, text_ids, image_ids), ("i2t", scores.T, image_ids, text_ids)):
        ref = brute_force(matrix, qid, gid)
        got = getattr(result, direction)
        assert got.first_hit_rank.tolist() == ref["first"], direction
        assert torch.allclose(got.average_precision, torch.tensor(ref["ap"], dtype=torch.float64)), direction
        assert torch.allclose(got.inverse_negative_penalty, torch.tensor(ref["inp"], dtype=torch.float64)), direction
