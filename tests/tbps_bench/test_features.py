"""Feature dicts with packed (variable-length) keys: rows, concatenation and checks keep them in step."""

import pytest
import torch

from tbps_bench.errors import BenchError
from tbps_bench.features import check_features, concat_features, feature_count, feature_rows, in_float32, stored


def _packed(lengths: list[int]) -> dict[str, torch.Tensor]:
    """Item i's packed rows all hold the value i, so any row mix-up shows."""
    lengths_t = torch.tensor(lengths)
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
    return {
        "global": torch.arange(len(lengths), dtype=torch.float32)[:, None].repeat(1, 2),
        "tokens:packed": owner[:, None].float().repeat(1, 3),
        "packed_lengths": lengths_t,
    }


def _unpacked(features):
    """Per item, the item values of its packed rows."""
    rows = features["tokens:packed"][:, 0].long().split(features["packed_lengths"].tolist())
    return [r.tolist() for r in rows]


@pytest.mark.parametrize("rows", [slice(0, 5), slice(1, 4), slice(3, 3), slice(4, 9)])
def test_slices_of_packed_features(rows):
    features = _packed([2, 1, 4, 3, 1])
    part = feature_rows(features, rows)
    items = list(range(5))[rows]
    assert feature_count(part) == len(items)
    assert _unpacked(part) == [[i] * [2, 1, 4, 3, 1][i] for i in items]
    assert part["global"][:, 0].tolist() == items


def test_indexed_rows_of_packed_features():
    features = _packed([2, 1, 4, 3, 1])
    index = torch.tensor([3, 0, 3, 4])
    part = feature_rows(features, index)
    assert _unpacked(part) == [[3, 3, 3], [0, 0], [3, 3, 3], [4]]
    assert part["packed_lengths"].tolist() == [3, 2, 3, 1]


def test_concatenated_batches_stay_packed():
    whole = concat_features([_packed([2, 1]), _packed([4])])
    assert whole["tokens:packed"].shape == (7, 3) and whole["packed_lengths"].tolist() == [2, 1, 4]
    check_features(whole, 3, "test")


def test_bad_packed_features_are_one_clear_error():
    features = _packed([2, 1])
    with pytest.raises(BenchError, match="returned 3 rows for 'tokens:packed' but the batch has 2 packed rows"):
        check_features({**features, "packed_lengths": torch.tensor([1, 1])}, 2, "test")
    del features["packed_lengths"]
    with pytest.raises(BenchError, match="without 'packed_lengths'"):
        check_features(features, 2, "test")


def test_storage_precision_applies_to_floating_point_only():
    kept = stored(_packed([2, 1]), torch.bfloat16)
    assert kept["tokens:packed"].dtype == torch.bfloat16 and kept["packed_lengths"].dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("power", [-100, -20, 0, 20, 100])
def test_stored_half_precision_keeps_any_range(dtype, power):
    """Small integers times 2**power are exact in float16 and bfloat16 once each item is scaled: a
    plain cast would flush 2**-100 to zero and turn 2**100 into infinity in float16."""
    generator = torch.Generator().manual_seed(0)
    features = _packed([2, 1, 3])
    features = {
        key: torch.randint(-8, 9, value.shape, generator=generator).float() * 2.0**power
        if value.is_floating_point()
        else value
        for key, value in features.items()
    }
    kept = stored(features, dtype)
    assert all(value.dtype == dtype for key, value in kept.items() if key in ("global", "tokens:packed"))
    back = in_float32(kept)
    assert sorted(back) == sorted(features)  # the scales are storage only
    for key, value in features.items():
        assert torch.equal(back[key], value), key
    assert torch.equal(in_float32(feature_rows(kept, slice(1, 3)))["tokens:packed"], features["tokens:packed"][2:])


def test_stored_rows_that_lose_their_values_are_refused():
    with pytest.raises(BenchError, match=r"'embedding'.*cannot hold faithfully \(1 rows, first at row 1"):
        stored({"embedding": torch.tensor([[1.0, 2.0], [1e-300, 3e-300]], dtype=torch.float64)}, torch.float32)
    with pytest.raises(BenchError, match="cannot hold faithfully"):
        stored({"embedding": torch.tensor([[1e300, 1.0]], dtype=torch.float64)}, torch.bfloat16)
    # a row whose small entries are lost next to a huge one is still the same row, up to rounding
    kept = stored({"embedding": torch.tensor([[1e30, 1e-30, 1.0]])}, torch.float16)
    assert float(in_float32(kept)["embedding"][0, 0]) == pytest.approx(1e30, rel=1e-3)
