"""Feature dictionaries: what an encoder returns for a batch of items, and the operations the
harness needs on them (count, rows, concatenation, storage precision).

A feature is a tensor with one row per item, or a *packed* tensor: the variable-length rows of
every item concatenated (a token-level feature at each text's true length, where padding to the
longest text would multiply its memory). A packed key ends in ``PACKED``, and the dict then holds
``PACKED_LENGTHS``, each item's number of rows. Every operation here keeps the two in step, so the
cache, sharding across processes and scoring tiles all treat a packed feature like any other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tbps_bench.errors import BenchError

Features = dict[str, torch.Tensor]
#: suffix of a packed key: ``local_text_key:packed`` holds (sum of lengths) x d
PACKED = ":packed"
#: per-item row counts of the packed keys (int64, one row per item)
PACKED_LENGTHS = "packed_lengths"
#: suffix of the per-row scale of a feature stored in float16 (see ``stored``)
SCALE = "@scale"
#: ``--feature-dtype``: precision of stored floating-point features (cache and memory)
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_packed(key: str) -> bool:
    return key.endswith(PACKED)


def feature_count(features: Features) -> int:
    if PACKED_LENGTHS in features:
        return len(features[PACKED_LENGTHS])
    return len(next(value for key, value in features.items() if not is_packed(key)))


def _packed_positions(lengths: torch.Tensor, rows: slice | torch.Tensor) -> slice | torch.Tensor:
    """The packed rows of items ``rows``: a slice for a slice of items, an index otherwise."""
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    if isinstance(rows, slice):
        first, stop, step = rows.indices(len(lengths))
        if step != 1:
            raise ValueError("packed features take contiguous row slices")
        if stop <= first:
            return slice(0, 0)
        return slice(int(starts[first]), int(ends[stop - 1]))
    rows = torch.as_tensor(rows, device=lengths.device)
    counts = lengths[rows]
    offsets = torch.arange(int(counts.sum()), device=lengths.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    return torch.repeat_interleave(starts[rows], counts) + offsets


def feature_rows(features: Features, rows: slice | torch.Tensor, device: torch.device | None = None) -> Features:
    """Items ``rows`` (a slice or an index tensor) of every feature, packed ones included."""
    positions = _packed_positions(features[PACKED_LENGTHS], rows) if PACKED_LENGTHS in features else None
    if isinstance(positions, torch.Tensor):
        positions = positions.cpu()
    out = {}
    for key, value in features.items():
        part = value[positions] if is_packed(key) else value[rows]
        out[key] = part.to(device) if device is not None else part
    return out


def pad_to(tensor: torch.Tensor, trailing: list[int]) -> torch.Tensor:
    """Zero-pad the trailing sizes of ``tensor`` (variable-length features) up to ``trailing``."""
    sizes = zip(reversed(tensor.shape[1:]), reversed(trailing), strict=True)
    pad = [p for size, want in sizes for p in (0, want - size)]
    return torch.nn.functional.pad(tensor, pad) if any(pad) else tensor


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate batches whose trailing sizes differ: zero-pad to the largest."""
    widest = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors), strict=True)]
    return torch.cat([pad_to(t, widest) for t in tensors])


def concat_features(parts: list[Features]) -> Features:
    """Consecutive batches' features as one (packed keys simply concatenate)."""
    return {key: _cat_padded([p[key] for p in parts]) for key in parts[0]}


def check_features(features: Features, count: int, who: str) -> None:
    """One clear line for an encoder output the harness cannot use."""
    if not features:
        raise BenchError(f"{who} returned no features")
    packed = [key for key in features if is_packed(key)]
    if packed and PACKED_LENGTHS not in features:
        raise BenchError(f"{who} returned packed features {packed} without '{PACKED_LENGTHS}' (rows per item)")
    for key, tensor in features.items():
        if not isinstance(tensor, torch.Tensor):
            raise BenchError(f"{who} returned {type(tensor).__name__} for '{key}'; expected a tensor")
        expected = int(features[PACKED_LENGTHS].sum()) if is_packed(key) else count
        if tensor.shape[0] != expected:
            what = "packed rows (the sum of its lengths)" if is_packed(key) else "items"
            raise BenchError(f"{who} returned {tensor.shape[0]} rows for '{key}' but the batch has {expected} {what}")
        if tensor.is_floating_point():
            bad = ~torch.isfinite(tensor)
            if bool(bad.any()):
                rows = torch.nonzero(bad.reshape(tensor.shape[0], -1).any(1)).reshape(-1)
                raise BenchError(
                    f"{who} returned NaN/inf features for '{key}': {rows.numel()} rows, first at row {int(rows[0])}"
                )


#: what the stored values may differ from the encoder's, relative to each item's norm (a few units
#: in the last place of the storage type: rounding, never a lost range)
STORAGE_TOLERANCE = {torch.float16: 2.0**-8, torch.bfloat16: 2.0**-5, torch.float32: 2.0**-20}
#: float16's largest power of two below its maximum (65504): each item's largest entry is scaled
#: just below it, so the item's whole dynamic range stays above float16's smallest normal number
_FLOAT16_TOP_EXPONENT = 15


def scale_key(key: str) -> str:
    """The key of the per-row scale kept beside a float16 feature (packed when the feature is)."""
    return key[: -len(PACKED)] + SCALE + PACKED if is_packed(key) else key + SCALE


def _is_scale(key: str) -> bool:
    return key.endswith(SCALE) or key.endswith(SCALE + PACKED)


def _stored_tensor(
    key: str, tensor: torch.Tensor, dtype: torch.dtype, who: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tensor`` in ``dtype`` (and, for float16, the per-row power-of-two scale it was divided by),
    refused in one line when the stored rows are not the encoder's rows up to rounding."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == dtype or tensor.shape[0] == 0 or tensor[0].numel() == 0:
        return tensor.to(dtype), None
    wide = tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    rows = wide.reshape(len(wide), -1)
    largest = rows.abs().amax(1)
    exponent = torch.frexp(largest).exponent.to(torch.int64)
    scale = None
    if dtype == torch.float16:  # powers of two: exact to apply and to undo, in float32
        power = (exponent - _FLOAT16_TOP_EXPONENT).clamp(-126, 127).to(torch.float32)
        scale = torch.exp2(power)
        value = (rows / scale.to(rows.dtype)[:, None]).to(dtype)
        restored_rows = value.to(rows.dtype) * scale.to(rows.dtype)[:, None]
    else:
        value = rows.to(dtype)
        restored_rows = value.to(rows.dtype)
    # compared in units of each row's largest entry, where nothing over- or underflows
    unit = torch.exp2(-exponent.clamp(-1000, 1000).to(rows.dtype))[:, None]
    error = ((restored_rows - rows) * unit).norm(dim=1)
    size = (rows * unit).norm(dim=1)
    bad = ~torch.isfinite(restored_rows).all(1) | (error > STORAGE_TOLERANCE[dtype] * size)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        raise BenchError(
            f"{who} returned features for '{key}' that {dtype} storage cannot hold faithfully ({int(bad.sum())} rows, "
            f"first at row {row}, largest entry {float(largest[row]):.3g}); use --feature-dtype fp32"
        )
    return value.reshape(tensor.shape), scale


def stored(features: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, who: str = "encoder") -> Features:
    """Features as kept between encoding and scoring: on the CPU, floating point in ``dtype``.

    float16 cannot hold small or large raw values (below 6e-5 they lose precision, above 65504 they
    are infinite), so each item is divided by a power of two that brings its largest entry just
    under float16's maximum, and the scale is kept under ``scale_key(key)``; ``in_float32`` undoes it
    exactly. Every cast is checked: stored rows equal the encoder's up to rounding, or one line."""
    out: Features = {}
    for key, value in features.items():
        if not value.is_floating_point():
            out[key] = value.detach().cpu()
            continue
        out[key], scale = _stored_tensor(key, value, dtype, who)
        if scale is not None:
            out[scale_key(key)] = scale
    return out


def in_float32(features: Mapping[str, torch.Tensor], device: torch.device | None = None) -> Features:
    """Features as methods receive them: floating point in fp32 whatever the storage precision, so
    that a plugin never sees bf16 it did not ask for (converted block by block, not all at once);
    float16 rows multiplied back by their stored scale (exact: a power of two)."""
    out: Features = {}
    for key, value in features.items():
        if _is_scale(key):
            continue
        if not value.is_floating_point():
            out[key] = value.to(device)
            continue
        value = value.to(device, torch.float32)
        scale = features.get(scale_key(key))
        if scale is not None:
            value = value * scale.to(device).reshape(-1, *[1] * (value.dim() - 1))
        out[key] = value
    return out
