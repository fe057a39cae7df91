"""CMPM, CMPC and the local contrastive term (CONT), as the released training computes them."""

from __future__ import annotations

import torch
from torch import nn

from tbps_models.losses import cmpc_loss, cmpm_loss, identity_target, matching_kl
from tbps_models.nafs.scoring import local_similarity


def cont_loss(local_scores: torch.Tensor, labels: torch.Tensor, lambda_softmax: float, eps: float = 1e-8):
    """Image-to-text only, on S_loc of every image x text pair of the batch."""
    return matching_kl(lambda_softmax * local_scores, identity_target(labels), eps)


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
