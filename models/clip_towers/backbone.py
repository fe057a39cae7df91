"""The one CLIP code path of tbps-bench: ``transformers.CLIPModel`` on tall person images.

Person-search codebases run CLIP's ViT on 384 x 128 images, with a patch stride that may differ
from the patch size (IRRA's ``stride_size``) and a position table of exactly that rectangular grid.
``PersonVisionEmbeddings`` is the only piece that differs from the library's: it convolves with the
checkpoint's stride and adds the stored table when it fits the grid, or the library's bicubic
interpolation of a square table otherwise (a CLIP folder trained on square images). Everything else,
the transformer blocks with QuickGELU, the causal text mask, LayerNorms and projections, is
``transformers``' own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class PersonVisionEmbeddings(CLIPVisionEmbeddings):
    """Patch embedding with any stride and a position table for any (rectangular) grid."""

    def __init__(self, config, stride: int, grid: tuple[int, int] | None = None):
        super().__init__(config)
        self.patch_embedding.stride = (stride, stride)
        if grid is not None:  # a table stored for exactly this grid
            self.num_patches = grid[0] * grid[1]
            self.num_positions = self.num_patches + 1
            self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
            self.position_ids = nn.Buffer(torch.arange(self.num_positions)[None], persistent=False)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)
        if tokens.shape[1] == self.position_embedding.num_embeddings:
            return tokens + self.position_embedding.weight[None]
        return tokens + self.interpolate_pos_encoding(tokens, height, width)


@dataclass
class TokenOutputs:
    """Every token's projected feature (B x N x E) and, when asked, the last block's attention
    probabilities averaged over heads (B x N x N)."""

    tokens: torch.Tensor
    last_attention: torch.Tensor | None = None


class PersonClip(nn.Module):
    """CLIP image and text towers with access to every projected token, as the re-id methods use."""

    def __init__(self, clip: CLIPModel, stride: int | None = None, grid: tuple[int, int] | None = None):
        super().__init__()
        self.clip = clip
        vision = clip.vision_model
        if stride is not None or grid is not None:
            stride = stride or vision.config.patch_size
            embeddings = PersonVisionEmbeddings(vision.config, stride, grid)
            if grid is None:  # the same table, used with another stride
                embeddings.load_state_dict(vision.embeddings.state_dict())
            vision.embeddings = embeddings

    @classmethod
    def from_config(cls, config: CLIPConfig, stride: int, grid: tuple[int, int]) -> PersonClip:
        return cls(CLIPModel(config), stride, grid)

    @staticmethod
    def _last_attention(output, wanted: bool) -> torch.Tensor | None:
        return output.attentions[-1].mean(dim=1) if wanted else None

    def image_tokens(self, pixels: torch.Tensor, attention: bool = False) -> TokenOutputs:
        vision = self.clip.vision_model
        output = vision(pixel_values=pixels, interpolate_pos_encoding=True, output_attentions=attention)
        tokens = self.clip.visual_projection(vision.post_layernorm(output.last_hidden_state))
        return TokenOutputs(tokens, self._last_attention(output, attention))

    def text_tokens(self, ids: torch.Tensor, attention: bool = False) -> TokenOutputs:
        """Causal attention only (no padding mask), as the released CLIP re-id code runs it."""
        output = self.clip.text_model(input_ids=ids, output_attentions=attention)
        tokens = self.clip.text_projection(output.last_hidden_state)
        return TokenOutputs(tokens, self._last_attention(output, attention))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The class token's projected feature."""
        return self.image_tokens(pixels).tokens[:, 0]

    def encode_texts(self, ids: torch.Tensor, end_token: int | None = None) -> torch.Tensor:
        """The projected feature at the end token: the largest id of each row (OpenAI's vocabulary), or
        the first ``end_token`` when a tokenizer's end token is not its largest id."""
        tokens = self.text_tokens(ids).tokens
        end = ids.argmax(dim=-1) if end_token is None else (ids == end_token).int().argmax(dim=-1)
        return tokens[torch.arange(len(ids), device=ids.device), end]
