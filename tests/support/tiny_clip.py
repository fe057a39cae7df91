"""A tiny random CLIP folder (no CLIP weights install offline): character-level BPE tokenizer.

``TINY_CLIP`` is the committed folder that ``write_tiny_clip`` wrote (the smoke test over every
method reads it too); run this file to write it again: ``python tests/support/tiny_clip.py``."""

from __future__ import annotations

import json
import string
from pathlib import Path

from paths import FIXTURES

TINY_CLIP = FIXTURES / "smoke" / "tiny_clip"


def write_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,;!?'-")
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(folder))
    return folder


if __name__ == "__main__":
    print(write_tiny_clip(TINY_CLIP))
