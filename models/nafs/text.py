"""The BERT text branch: full caption and each sub-sentence through the same encoder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tbps_bench.errors import BenchError


def load_bert(folder: str | Path, pretrained: bool) -> nn.Module:
    """A ``transformers.BertModel`` from a local folder; never reaches the network."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BenchError(f"text encoder folder {folder} has no config.json; expected a BERT-family folder")
    try:
        config = BertConfig.from_dict(json.loads(config_file.read_text()))
    except ValueError as exc:
        raise BenchError(f"cannot read {config_file}: {exc}") from exc
    if not pretrained:
        return BertModel(config, add_pooling_layer=True)
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise BenchError(
            f"text encoder folder {folder} has no model.safetensors or pytorch_model.bin; "
            "give a folder with weights, or load an official checkpoint that contains them"
        )
    return BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=True)


class TextExtractor(nn.Module):
    """Holds the BERT under the official attribute name (``language_model.textExtractor``)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.textExtractor = bert

    @property
    def hidden_size(self) -> int:
        return int(self.textExtractor.config.hidden_size)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, sub_tokens: torch.Tensor, sub_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-caption hidden states (B x T x d) and sub-sentence [CLS] vectors (B x S x d)."""
        hidden = self.textExtractor(
            input_ids=tokens, attention_mask=mask, token_type_ids=torch.zeros_like(tokens)
        ).last_hidden_state
        batch, subs, length = sub_tokens.shape
        # only [CLS] is read from a sub-sentence, and masked padding cannot reach it: cut the padding
        used = max(int(sub_mask.sum(-1).max()), 1) if sub_mask.numel() else length
        flat = sub_tokens.reshape(batch * subs, length)[:, :used]
        flat_mask = sub_mask.reshape(batch * subs, length)[:, :used]
        sub_cls = self.textExtractor(
            input_ids=flat, attention_mask=flat_mask, token_type_ids=torch.zeros_like(flat)
        ).last_hidden_state[:, 0]
        return hidden, sub_cls.reshape(batch, subs, -1)
