"""The ALBEF family's cross-attention kernels on their own: the blocked one (bf16 / fp16 on CPU)
against torch's fused attention and against the whole-matrix arithmetic it cuts into blocks."""

from __future__ import annotations

import pytest
import torch

from tbps_models.albef.text import ROWS_A_BLOCK, _attend, _attend_in_blocks

from albef_eager import eager_attention

HEADS, WIDTH, KEYS = 4, 16, 37


def _problem(rows: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(rows)
    query = torch.randn(rows, HEADS * WIDTH, generator=generator)
    key, value = (torch.randn(HEADS, KEYS, WIDTH, generator=generator) for _ in range(2))
    return query.to(dtype), key.to(dtype), value.to(dtype)


@pytest.mark.parametrize("rows", [1, ROWS_A_BLOCK - 1, ROWS_A_BLOCK, ROWS_A_BLOCK + 1, 3 * ROWS_A_BLOCK + 5])
def test_blocks_compute_the_fused_attention(rows):
    """In fp32 the blocks give torch's fused attention (the kernel used there) to rounding, for
    every row, whatever the rows' count against the block size."""
    query, key, value = _problem(rows, torch.float32)
    fused, blocked = torch.empty_like(query), torch.full_like(query, float("nan"))
    _attend(query, key, value, fused)
    _attend_in_blocks(query, key, value, blocked)
    torch.testing.assert_close(blocked, fused, rtol=1e-5, atol=1e-6)


def test_blocks_round_as_the_whole_matrix_in_bf16():
    """In bf16 each block rounds as the written-out attention over all rows at once does: scores
    q k^T / sqrt(d) rounded to bf16, softmax, products in bf16."""
    rows = 2 * ROWS_A_BLOCK + 3
    query, key, value = _problem(rows, torch.bfloat16)
    whole = eager_attention(query.view(rows, HEADS, WIDTH).transpose(0, 1), key, value).transpose(0, 1).flatten(1)
    blocked = torch.empty_like(query)
    _attend_in_blocks(query, key, value, blocked)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=0)
