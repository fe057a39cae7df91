"""The BERT text branch: full caption and each sub-sentence through the same encoder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tbps_bench.errors import BenchError
from tbps_models.length_pieces import CPU_TOKENS_PER_PIECE, in_length_pieces, length_pieces


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
        budget = CPU_TOKENS_PER_PIECE if tokens.device.type == "cpu" else float("inf")
        batch, subs, length = sub_tokens.shape
        flat = sub_tokens.reshape(batch * subs, length)
        flat_mask = sub_mask.reshape(batch * subs, length)
        if self.training:
            return self._hidden(tokens, mask), self._sub_sentence_cls(flat, flat_mask).reshape(batch, subs, -1)
        # full captions keep every position: the model's LayerNorm over all text elements reads the
        # encoder's outputs at padding positions too, so they cannot be cut as the sub-sentences are
        pieces = length_pieces([tokens.shape[1]] * tokens.shape[0], budget) or [slice(None)]
        hidden = torch.cat([self._hidden(tokens[p], mask[p]) for p in pieces])
        return hidden, self._distinct_sub_sentence_cls(flat, flat_mask, budget).reshape(batch, subs, -1)

    def _hidden(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.textExtractor(input_ids=tokens, attention_mask=mask, token_type_ids=torch.zeros_like(tokens))
        return states.last_hidden_state

    def _sub_sentence_cls(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[CLS] of each row. Only [CLS] is read, and masked padding cannot reach it: the padding
        past the longest row is cut."""
        used = max(int(mask.sum(-1).max()), 1) if mask.numel() else tokens.shape[1]
        tokens, mask = tokens[:, :used], mask[:, :used]
        states = self.textExtractor(input_ids=tokens, attention_mask=mask, token_type_ids=torch.zeros_like(tokens))
        return states.last_hidden_state[:, 0]

    def _distinct_sub_sentence_cls(self, tokens: torch.Tensor, mask: torch.Tensor, budget: float) -> torch.Tensor:
        """Each distinct sub-sentence once, sorted by length, in pieces each cut to its longest row.

        Why: sub-sentences repeat ("He has short hair") and are short next to the padding of the
        longest one in a batch; on toy-pedes' train split 6,400 became 3,158, and the tokens run
        through the encoder fell from 107,200 to about 35,000. Without dropout (this path) the
        outputs differ from the row-by-row ones by rounding only."""
        if tokens.shape[0] == 0:
            return self._sub_sentence_cls(tokens, mask)
        distinct, inverse = torch.unique(torch.cat([tokens, mask], dim=1), dim=0, return_inverse=True)
        distinct_tokens, distinct_mask = distinct[:, : tokens.shape[1]], distinct[:, tokens.shape[1] :]
        return in_length_pieces(self._sub_sentence_cls, distinct_tokens, distinct_mask, budget)[inverse]
