"""The released tokenisation scheme: full caption plus its first sub-sentences, each through BERT.

Kept exactly as the authors' code does it, including two quirks that change scores: a caption
longer than ``max_length`` word pieces loses its ``[SEP]``, and a caption with a single
sub-sentence is padded with the literal string ``"[PAD]"`` (tokenised as ``[CLS] [PAD] [SEP]``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tbps_bench.errors import BenchError

SUB_SENTENCE_DELIMITERS = re.compile(r"[;,!?.]")


def split_sub_sentences(caption: str, keep: int) -> list[str]:
    pieces = SUB_SENTENCE_DELIMITERS.split(caption)[:keep]
    return pieces + ["[PAD]"] * (keep - len(pieces))


class NafsTokenizer:
    """Word pieces of ``"[CLS] " + text + " [SEP]"``, truncated and zero-padded to ``max_length``."""

    def __init__(self, folder: str | Path, max_length: int = 100, sub_sentences: int = 2):
        from transformers import BertTokenizerFast

        vocab = Path(folder) / "vocab.txt"
        if not vocab.is_file():
            raise BenchError(f"text encoder folder {folder} has no vocab.txt; expected a BERT-family folder")
        self.tokenizer = BertTokenizerFast(str(vocab), do_lower_case=True)
        self.vocab_file = vocab
        self.max_length = max_length
        self.sub_sentences = sub_sentences

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([f"[CLS] {t} [SEP]" for t in texts], add_special_tokens=False)["input_ids"]
        tokens = torch.zeros(len(ids), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for row, piece_ids in enumerate(ids):
            kept = piece_ids[: self.max_length]
            tokens[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
            mask[row, : len(kept)] = 1
        truncated = torch.tensor([len(row) > self.max_length for row in ids], dtype=torch.bool)
        return {"tokens": tokens, "mask": mask, "truncated": truncated}

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        for index, caption in enumerate(captions):
            if not caption.strip():
                raise BenchError(f"caption {index} of the batch is empty; NAFS needs at least one word")
        full = self._encode(captions)
        pieces = [piece for caption in captions for piece in split_sub_sentences(caption, self.sub_sentences)]
        sub = self._encode(pieces)
        count = len(captions)
        return {
            "tokens": full["tokens"],
            "mask": full["mask"],
            # the official text_length: kept ids + 3 (one padding position too many; reproduced)
            "length": full["mask"].sum(1) + 3,
            "sub_tokens": sub["tokens"].view(count, self.sub_sentences, self.max_length),
            "sub_mask": sub["mask"].view(count, self.sub_sentences, self.max_length),
            # captions that lost word pieces; the harness counts them into the result
            "truncated": full["truncated"],
        }
