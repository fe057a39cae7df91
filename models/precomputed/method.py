"""Scores or embeddings computed elsewhere, checked against the dataset split before use.

- ``.npz`` with ``similarity`` (texts x images), ``text_ids`` and ``image_ids``;
- ``.safetensors`` with ``text_embeddings``, ``image_embeddings``, ``text_ids`` and ``image_ids``.

Rows follow the split's order (captions in annotation order, unique gallery images in order), as
``tbps-bench data info`` and the evaluation view define it; the ids must match position by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.features import feature_count
from tbps_bench.fileio import read_npz, sha256_file
from tbps_bench.methods import Features, Method, PairwiseMethod
from tbps_bench.metrics import unit_rows


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BenchError(f"precomputed file {path} does not exist")
    if path.suffix == ".npz":
        return {k: torch.from_numpy(v) for k, v in read_npz(path).items()}
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - numpy and safetensors raise their own types
        raise BenchError(f"cannot read precomputed file {path}: {exc}") from exc
    raise BenchError(f"precomputed file {path}: expected .npz (scores) or .safetensors (embeddings)")


def precomputed(file: str | None = None, label: str | None = None, **kwargs: Any) -> Method:
    """``precomputed``: a saved score matrix (.npz) is scored as is; saved embeddings by cosine.

    Options: ``file`` (required), ``label`` (the name shown on leaderboards)."""
    if file is None:
        raise BenchError("precomputed needs --method-arg file=PATH (.npz scores or .safetensors embeddings)")
    kind = PrecomputedScores if Path(file).suffix == ".npz" else PrecomputedEmbeddings
    return kind(file=file, label=label, **kwargs)


precomputed.reads_checkpoint = False  # the file is the method's whole state
precomputed.smoke_arguments = ("file={fixtures}/smoke/toy_pedes_test_24_oracle.npz",)  # the first 24 test images


class PrecomputedEmbeddings(Method):
    """Embeddings saved by another tool; rows checked id by id against the split."""

    name = "precomputed"
    needs_pixels = False
    reads_checkpoint = False
    needed = ("text_embeddings", "image_embeddings", "text_ids", "image_ids")

    def __init__(self, file: str, label: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(file)
        self.label = label or self.path.stem
        self.data = _load(self.path)
        missing = [k for k in self.needed if k not in self.data]
        if missing:
            raise BenchError(f"precomputed file {self.path} lacks {missing}; it has {sorted(self.data)}")
        self.sha256 = sha256_file(self.path)

    def arguments(self) -> dict[str, Any]:
        return {"label": self.label, "file": self.path.name, "sha256": self.sha256}

    def _rows(self, kind: str, batch) -> torch.Tensor:
        """Check this batch's ids against the file, then return the file's rows for it."""
        ids = self.data[f"{kind}_ids"].reshape(-1).to(torch.int64)
        index = batch["index"].cpu()
        if int(index.max()) >= len(ids):
            raise BenchError(
                f"precomputed file {self.path} has {len(ids)} {kind} rows; the split has more (row {int(index.max())})"
            )
        expected = batch["pid"].cpu().to(torch.int64)
        wrong = torch.nonzero(ids[index] != expected).reshape(-1)
        if len(wrong):
            row = int(index[wrong[0]])
            raise BenchError(
                f"precomputed file {self.path}: {kind}_ids[{row}] is {int(ids[row])} but the split's {kind} {row} "
                f"belongs to person {int(expected[wrong[0]])}; rows must follow the split's order"
            )
        return self._features(kind, index)

    def _features(self, kind: str, index: torch.Tensor) -> torch.Tensor:
        rows = self.data[f"{kind}_embeddings"][index]
        if rows.dtype == torch.float64:  # scored by cosine: unit rows before float32 could flush or overflow them
            rows = unit_rows(rows)
        return rows.float()

    def encode_images(self, batch) -> torch.Tensor:
        return self._rows("image", batch)

    def encode_texts(self, batch) -> torch.Tensor:
        return self._rows("text", batch)


class PrecomputedScores(PairwiseMethod, PrecomputedEmbeddings):
    """A texts x images score matrix saved by another tool; ids checked against the split."""

    needed = ("similarity", "text_ids", "image_ids")

    def _features(self, kind: str, index: torch.Tensor) -> torch.Tensor:
        return index.float()[:, None]  # the rows' positions; the matrix itself is scored in score_all

    def score_all(self, image_features: Features, text_features: Features, block: int = 256) -> torch.Tensor:
        similarity = self.data["similarity"]
        if similarity.dtype != torch.float64:  # float64 is ranked as given: float32 could tie or overflow it
            similarity = similarity.float()
        texts, images = len(self.data["text_ids"].reshape(-1)), len(self.data["image_ids"].reshape(-1))
        if similarity.shape != (texts, images):
            raise BenchError(
                f"precomputed file {self.path}: similarity is {tuple(similarity.shape)}, expected texts x images = "
                f"({texts}, {images})"
            )
        split_size = (feature_count(text_features), feature_count(image_features))
        if (texts, images) != split_size:
            raise BenchError(
                f"precomputed file {self.path} scores {texts} texts x {images} images; the split has "
                f"{split_size[0]} x {split_size[1]}"
            )
        return similarity
