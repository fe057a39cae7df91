"""CMPM, CMPC and the local contrastive term (CONT), as the released training computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tbps_models.nafs.scoring import local_similarity


def identity_target(labels: torch.Tensor) -> torch.Tensor:
    """q_ij = y_ij / sqrt(n_j): an L2 (not L1) normalisation of the identity matrix, as released."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.norm(dim=1)


def _matching_kl(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    prediction = torch.softmax(logits, dim=1)
    return (prediction * (F.log_softmax(logits, dim=1) - torch.log(target + eps))).sum(1).mean()


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    target = identity_target(labels)
    image_to_text = image @ F.normalize(text, dim=1, eps=0).T
    text_to_image = text @ F.normalize(image, dim=1, eps=0).T
    return _matching_kl(image_to_text, target, eps) + _matching_kl(text_to_image, target, eps)


def cmpc_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    image_unit, text_unit = F.normalize(image, dim=1, eps=0), F.normalize(text, dim=1, eps=0)
    image_on_text = (image * text_unit).sum(1, keepdim=True) * text_unit
    text_on_image = (text * image_unit).sum(1, keepdim=True) * image_unit
    classifier = weight / weight.norm(dim=0, keepdim=True)
    return F.cross_entropy(image_on_text @ classifier, labels) + F.cross_entropy(text_on_image @ classifier, labels)


def cont_loss(local_scores: torch.Tensor, labels: torch.Tensor, lambda_softmax: float, eps: float = 1e-8):
    """Image-to-text only, on S_loc of every image x text pair of the batch."""
    return _matching_kl(lambda_softmax * local_scores, identity_target(labels), eps)


class NafsLoss(nn.Module):
    """Owns the CMPC classifier ``W`` (d x identities, xavier-uniform) and weights the three terms."""

    def __init__(self, feature_size: int, num_classes: int, weights: dict[str, float], lambda_softmax: float):
        super().__init__()
        self.W = nn.Parameter(torch.empty(feature_size, num_classes))
        nn.init.xavier_uniform_(self.W)
        self.weights = dict(weights)
        self.lambda_softmax = lambda_softmax

    def forward(
        self,
        images: dict[str, torch.Tensor],
        texts: dict[str, torch.Tensor],
        lengths: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        g_image, g_text = images["global_img_feat"], texts["global_text_feat"]
        terms = {
            "cmpm": cmpm_loss(g_image, g_text, labels),
            "cmpc": cmpc_loss(g_image, g_text, labels, self.W),
        }
        if self.weights.get("cont", 0.0):
            local = local_similarity(
                images["local_img_query"],
                images["local_img_value"],
                texts["local_text_key"],
                texts["local_text_value"],
                lengths,
                self.lambda_softmax,
            )
            terms["cont"] = cont_loss(local, labels, self.lambda_softmax)
        terms["total"] = sum(self.weights.get(name, 0.0) * value for name, value in terms.items())
        return terms
