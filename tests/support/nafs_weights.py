"""Deterministic NAFS weights in the authors' release layout, as a function of each key name.

The rule the reference outputs were produced with: u = PCG64(crc32(salt + key)).random(numel),
z = (u - 0.5) * 2 sqrt(3); then per kind of tensor: running_mean 0.1 z; running_var 1 + 0.1 |z|;
bias 0.1 z; norm scales (1-D weights, LayerNorm, local_bottleneck) 1 + 0.1 z; other >= 2-D tensors
z / sqrt(fan-in); anything else 0.1 z; num_batches_tracked zeros.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from paths import FIXTURES

NAFS_REFERENCE = FIXTURES / "nafs_reference"


class _Scratch:
    """One float64 buffer reused for every tensor's uniforms: fresh allocations of hundreds of
    megabytes (page faults) cost more than generating the numbers."""

    buffer = np.empty(0)

    @classmethod
    def uniforms(cls, seed: int, count: int) -> np.ndarray:
        if cls.buffer.size < count:
            cls.buffer = np.empty(count)
        out = cls.buffer[:count]
        np.random.Generator(np.random.PCG64(seed)).random(out=out)
        return out


def fill(key: str, shape: tuple[int, ...], salt: str = "") -> torch.Tensor:
    """The rule above, in place: each step is the same float64 operation as written out in the
    docstring, the result cast to float32 once (the sums ``test_reference.py`` checks pin it)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    z = _Scratch.uniforms(zlib.crc32((salt + key).encode("utf-8")), int(np.prod(shape)))
    z -= 0.5
    z *= 2.0 * np.sqrt(3.0)
    result = torch.empty(shape, dtype=torch.float32)
    out = result.numpy().reshape(-1)
    is_scale = len(shape) == 1 or "LayerNorm" in key or "local_bottleneck" in key
    if key.endswith(("running_mean", "bias")):
        np.multiply(z, 0.1, out=out, casting="same_kind")
    elif key.endswith("running_var"):
        np.abs(z, out=z)
        z *= 0.1
        np.add(z, 1.0, out=out, casting="same_kind")
    elif key.endswith("weight") and is_scale:
        z *= 0.1
        np.add(z, 1.0, out=out, casting="same_kind")
    elif len(shape) >= 2:
        np.divide(z, np.sqrt(float(np.prod(shape[1:]))), out=out, casting="same_kind")
    else:
        np.multiply(z, 0.1, out=out, casting="same_kind")
    return result


def release_checkpoint(keys_file: Path = NAFS_REFERENCE / "state_dict_keys.tsv", salt: str = "") -> dict:
    """``{'network': {'module.<key>': tensor}, 'W': tensor}`` as the release stores it."""
    network, weight_matrix = {}, None
    lines = keys_file.read_text().splitlines()[1:]
    for line in lines:
        key, shape_text = line.split("\t")[:2]
        shape = () if shape_text == "scalar" else tuple(int(s) for s in shape_text.split("x"))
        name = key.removeprefix("module.")
        tensor = fill(name, shape, salt)
        if key == "W":
            weight_matrix = tensor
        else:
            network[key] = tensor
    return {"network": network, "W": weight_matrix}
