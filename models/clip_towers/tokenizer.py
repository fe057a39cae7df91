"""CLIP's byte-level BPE with the truncation rule of the IRRA-family codebases.

The vocabulary file and the BPE itself come from ``open_clip`` (the same
``bpe_simple_vocab_16e6.txt.gz`` bytes that IRRA ships), including its cleaning: ftfy, HTML
unescape (twice), whitespace collapsing and lower case. The rule around it is the authors':
``[start] + bpe(caption) + [end]``, zero-padded to the context length; a longer caption keeps its
first ``context`` tokens and its last one becomes the end token.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

import torch

from tbps_bench.errors import BenchError

START, END = 49406, 49407


@cache
def _bpe():
    """open_clip's ``SimpleTokenizer``. Its module is loaded on its own: it needs only ftfy, regex and
    the vocabulary file beside it, while the package's ``__init__`` imports every model (seconds)."""
    package = importlib.util.find_spec("open_clip")
    if package is None or not package.submodule_search_locations:
        raise BenchError("the CLIP tokenizer needs open-clip-torch: pip install open-clip-torch")
    path = Path(package.submodule_search_locations[0]) / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("tbps_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(bpe_path=str(path.parent / "bpe_simple_vocab_16e6.txt.gz"))


def tokenize(captions: list[str], context: int = 77) -> dict[str, torch.Tensor]:
    """``ids`` (n x context, int64) and ``truncated`` (n, bool): which captions lost tokens."""
    ids = torch.zeros(len(captions), context, dtype=torch.int64)
    truncated = torch.zeros(len(captions), dtype=torch.bool)
    for row, caption in enumerate(captions):
        tokens = [START, *_bpe().encode(caption), END]
        if len(tokens) > context:
            tokens = tokens[:context]
            tokens[-1] = END
            truncated[row] = True
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return {"ids": ids, "truncated": truncated}
