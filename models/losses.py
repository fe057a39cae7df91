"""Identity-matching losses shared by methods: CMPM and CMPC (Zhang and Lu, ECCV 2018), in the
form the NAFS release computes them (which its reference outputs pin down)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_target(labels: torch.Tensor) -> torch.Tensor:
    """q_ij = y_ij / sqrt(n_j): an L2 (not L1) normalisation of the identity matrix, as released."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.norm(dim=1)


def matching_kl(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    prediction = torch.softmax(logits, dim=1)
    return (prediction * (F.log_softmax(logits, dim=1) - torch.log(target + eps))).sum(1).mean()


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    target = identity_target(labels)
    image_to_text = image @ F.normalize(text, dim=1, eps=0).T
    text_to_image = text @ F.normalize(image, dim=1, eps=0).T
    return matching_kl(image_to_text, target, eps) + matching_kl(text_to_image, target, eps)


def cmpc_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    image_unit, text_unit = F.normalize(image, dim=1, eps=0), F.normalize(text, dim=1, eps=0)
    image_on_text = (image * text_unit).sum(1, keepdim=True) * text_unit
    text_on_image = (text * image_unit).sum(1, keepdim=True) * image_unit
    classifier = weight / weight.norm(dim=0, keepdim=True)
    return F.cross_entropy(image_on_text @ classifier, labels) + F.cross_entropy(text_on_image @ classifier, labels)
