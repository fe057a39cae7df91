"""Pretrained weights from local places only: a path, or a populated Hugging Face / torch hub cache.

Nothing here reaches the network; a miss names what was looked for and where.
"""

from __future__ import annotations

from pathlib import Path

from tbps_bench.errors import BenchError


def resolve_text_encoder(value: str | Path) -> Path:
    """A BERT-family folder, or a hub id (``bert-base-uncased``) already in the Hugging Face cache."""
    folder = Path(value)
    if folder.is_dir():
        return folder
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(value), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - the hub raises several types for a missing or invalid id
        cache = constants.HF_HUB_CACHE
        raise BenchError(
            f"text encoder {value!s} is neither a folder nor a model in the Hugging Face cache ({cache}); "
            "give a folder with config.json and vocab.txt"
        ) from exc


def resolve_trunk_weights(value: str | Path, trunk: str) -> Path:
    """A torchvision state dict file, or ``imagenet``: torchvision's file in the torch hub cache."""
    if str(value) != "imagenet":
        path = Path(value)
        if not path.is_file():
            raise BenchError(f"trunk weights file {path} does not exist; expected a torchvision {trunk} state dict")
        return path
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(checkpoints.glob(f"{trunk}-*.pth"))
    if not found:
        raise BenchError(
            f"trunk_weights=imagenet: no {trunk}-*.pth in the torch hub cache {checkpoints}; "
            "give the file's path instead"
        )
    return found[-1]
