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


def fill(key: str, shape: tuple[int, ...], salt: str = "") -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    generator = np.random.Generator(np.random.PCG64(zlib.crc32((salt + key).encode("utf-8"))))
    z = ((generator.random(int(np.prod(shape))) - 0.5) * (2.0 * np.sqrt(3.0))).reshape(shape)
    is_scale = len(shape) == 1 or "LayerNorm" in key or "local_bottleneck" in key
    if key.endswith("running_mean"):
        x = 0.1 * z
    elif key.endswith("running_var"):
        x = 1.0 + 0.1 * np.abs(z)
    elif key.endswith("bias"):
        x = 0.1 * z
    elif key.endswith("weight") and is_scale:
        x = 1.0 + 0.1 * z
    elif len(shape) >= 2:
        x = z / np.sqrt(float(np.prod(shape[1:])))
    else:
        x = 0.1 * z
    return torch.from_numpy(x.astype(np.float32))


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
