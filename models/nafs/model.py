"""The NAFS network: image and text branches, the global features and the local key/value heads."""

from __future__ import annotations

import torch
from torch import nn

from tbps_bench.errors import BenchError
from tbps_models.local_weights import resolve_text_encoder
from tbps_models.nafs.config import NafsConfig
from tbps_models.nafs.image import StaircaseImageNet
from tbps_models.nafs.scoring import local_similarity
from tbps_models.nafs.text import TextExtractor, load_bert


def _frozen_bias_batchnorm(features: int) -> nn.BatchNorm1d:
    """BatchNorm1d whose bias starts at 0 and is not trained (the released "bottleneck")."""
    norm = nn.BatchNorm1d(features)
    nn.init.zeros_(norm.bias)
    norm.bias.requires_grad_(False)
    return norm


class Nafs(nn.Module):
    """Module and parameter names follow the released checkpoint, so its state dict loads as is."""

    def __init__(self, config: NafsConfig):
        super().__init__()
        if config.text_encoder is None:
            raise BenchError("NAFS needs a text encoder folder (config.json + vocab.txt): set text_encoder")
        config.text_encoder = str(resolve_text_encoder(config.text_encoder))
        self.config = config
        self.image_model = StaircaseImageNet(config.trunk, config.part2, config.part3, config.trunk_weights)
        self.language_model = TextExtractor(load_bert(config.text_encoder, config.text_encoder_pretrained))
        d = self.language_model.hidden_size
        channels = self.image_model.channels
        elements = config.text_elements
        self.feature_size = d
        self.conv_images = nn.Conv2d(channels, d, 1)
        self.conv_text = nn.Conv2d(d, d, 1)
        self.bottleneck_image = _frozen_bias_batchnorm(d)
        self.bottleneck_text = _frozen_bias_batchnorm(d)
        self.local_fc_text_key = nn.Linear(d, d)
        self.local_bottleneck_text_key = nn.LayerNorm([elements, d])
        self.local_fc_text_value = nn.Linear(d, d)
        self.local_bottleneck_text_value = nn.LayerNorm([elements, d])
        self.global_image_query = nn.Linear(d, d)
        self.global_image_value = nn.Linear(d, d)
        self.fc_p2_list = nn.ModuleList(nn.Linear(channels, d) for _ in range(config.part2))
        self.fc_p3_list = nn.ModuleList(nn.Linear(channels, d) for _ in range(config.part3))
        self.fc_p2_list_query = nn.ModuleList(nn.Linear(d, d) for _ in range(config.part2))
        self.fc_p2_list_value = nn.ModuleList(nn.Linear(d, d) for _ in range(config.part2))
        self.fc_p3_list_query = nn.ModuleList(nn.Linear(d, d) for _ in range(config.part3))
        self.fc_p3_list_value = nn.ModuleList(nn.Linear(d, d) for _ in range(config.part3))
        #: the CMPC matrix of a loaded release checkpoint (not part of the network's state dict)
        self.loss_weight_matrix: torch.Tensor | None = None
        self._tokenizer = None

    def encode_images(
        self, images: torch.Tensor, perm2: list[int] | None = None, perm3: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        expected = (3, self.config.image_height, self.config.image_width)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise BenchError(
                f"NAFS expects images of shape (batch, {', '.join(map(str, expected))}); got {tuple(images.shape)}"
            )
        global_map, stripes = self.image_model(images, perm2, perm3)
        pooled = self.conv_images(global_map[:, :, None, None]).flatten(1)
        global_feat = self.bottleneck_image(pooled)
        stripe_feats = [fc(s) for fc, s in zip([*self.fc_p2_list, *self.fc_p3_list], stripes, strict=True)]
        queries = [self.global_image_query(global_feat)]
        values = [self.global_image_value(global_feat)]
        heads = zip(
            [*self.fc_p2_list_query, *self.fc_p3_list_query],
            [*self.fc_p2_list_value, *self.fc_p3_list_value],
            stripe_feats,
            strict=True,
        )
        for query, value, feat in heads:
            queries.append(query(feat))
            values.append(value(feat))
        return {
            "global_img_feat": global_feat,
            "local_img_query": torch.stack(queries, dim=1),
            "local_img_value": torch.stack(values, dim=1),
        }

    def encode_texts(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        sub_tokens: torch.Tensor,
        sub_mask: torch.Tensor,
        encoder_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``encoder_outputs``: the text encoder's (hidden states, sub-sentence [CLS]) when already known."""
        length = self.config.max_length
        if tokens.shape[1] != length or sub_tokens.shape[1:] != (self.config.sub_sentences, length):
            raise BenchError(
                f"NAFS expects token ids of length {length} and {self.config.sub_sentences} sub-sentences; got "
                f"{tuple(tokens.shape)} and {tuple(sub_tokens.shape)}"
            )
        hidden, sub_cls = encoder_outputs or self.language_model(tokens, mask, sub_tokens, sub_mask)
        global_feat = self.bottleneck_text(self.conv_text(hidden[:, 0, :, None, None]).flatten(1))
        elements = torch.cat([global_feat[:, None], sub_cls, hidden[:, 1 : length - 1]], dim=1)
        return {
            "global_text_feat": global_feat,
            "local_text_key": self.local_bottleneck_text_key(self.local_fc_text_key(elements)),
            "local_text_value": self.local_bottleneck_text_value(self.local_fc_text_value(elements)),
        }

    def score(
        self,
        images: dict[str, torch.Tensor],
        texts: dict[str, torch.Tensor],
        lengths: torch.Tensor,
        local_dtype: torch.dtype = torch.float32,
    ):
        """S = cos(global) + S_loc for every image x text pair, with the parts, as (images x texts).

        ``local_dtype=torch.bfloat16`` runs the local term's products in bf16 (faster on hardware
        with bf16 units; about 1e-3 mean and 2.5e-2 x max|S_loc| largest absolute error)."""
        # features stored in bf16/fp16 are scored in fp32 (the local products in ``local_dtype``)
        sim_global = torch.nn.functional.normalize(images["global_img_feat"].float(), dim=1, eps=1e-12) @ (
            torch.nn.functional.normalize(texts["global_text_feat"].float(), dim=1, eps=1e-12).T
        )
        local = [
            images["local_img_query"],
            images["local_img_value"],
            texts["local_text_key"],
            texts["local_text_value"],
        ]
        sim_local = local_similarity(*(t.to(local_dtype) for t in local), lengths, self.config.lambda_softmax)
        return sim_global + sim_local, sim_global, sim_local

    def tokenizer(self):
        from tbps_models.nafs.tokenization import NafsTokenizer

        if self._tokenizer is None:
            self._tokenizer = NafsTokenizer(self.config.text_encoder, self.config.max_length, self.config.sub_sentences)
        return self._tokenizer

    @torch.no_grad()
    def run(
        self,
        images: torch.Tensor,
        captions: list[str],
        labels: torch.Tensor | None = None,
        perm2: list[int] | None = None,
        perm3: list[int] | None = None,
    ) -> dict:
        """Preprocessed images (B x 3 x H x W) and caption strings in; every output out.

        Returns the six features, ``S`` (images x texts) with ``sim_global`` and ``sim_local``, the
        ``tokens``, and with ``labels`` the ``losses`` (needs the checkpoint's ``W``)."""
        device = next(self.parameters()).device
        tokens = self.tokenizer()(captions)
        images_out = self.encode_images(images.to(device), perm2, perm3)
        texts_out = self.encode_texts(*(tokens[k].to(device) for k in ("tokens", "mask", "sub_tokens", "sub_mask")))
        lengths = tokens["length"].clamp(max=self.config.text_elements).to(device)
        scores, sim_global, sim_local = self.score(images_out, texts_out, lengths)
        out = {**images_out, **texts_out, "S": scores, "sim_global": sim_global, "sim_local": sim_local}
        out["tokens"] = tokens
        if labels is not None:
            from tbps_models.nafs.losses import NafsLoss

            if self.loss_weight_matrix is None:
                raise BenchError("losses need the CMPC matrix W; this model was loaded without one")
            weight = self.loss_weight_matrix
            loss = NafsLoss(self.feature_size, weight.shape[1], self.config.loss_weights, self.config.lambda_softmax)
            loss.W.data = weight.to(device)
            out["losses"] = {k: v.detach() for k, v in loss(images_out, texts_out, lengths, labels.to(device)).items()}
        return out
