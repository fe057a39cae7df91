"""The identity losses several methods share (``tbps_models.losses``)."""

from __future__ import annotations

import pytest
import torch

from tbps_models.clip.method import infonce_loss, sdm_loss


@pytest.mark.parametrize("loss", [sdm_loss, infonce_loss])
def test_identity_losses_prefer_matching_pairs(loss):
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 3])
    centres = torch.nn.functional.normalize(torch.randn(4, 32, generator=generator), dim=1)
    aligned = loss(centres[labels], centres[labels], labels, 0.02)
    shuffled = loss(centres[labels], centres[labels[[2, 3, 4, 0, 1]]], labels, 0.02)
    assert float(aligned) < float(shuffled)
    assert float(loss(centres[labels] * 100, centres[labels], labels, 0.02)) == pytest.approx(float(aligned))
