"""Inputs checked before they are ranked: finite scores, integer person ids, unit-length rows, the
precision the kernel compares in."""

from __future__ import annotations

import torch

from tbps_bench.errors import BenchError, first_offending


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float32. Each row is first multiplied by the power of two that
    brings its largest entry into [0.5, 1): exact, so an ordinary row gets the bits plain
    ``normalize`` gives it, while rows far below or above float32's comfortable range neither
    underflow nor overflow when squared (a cosine does not depend on a row's scale)."""
    if embeddings.dtype != torch.float64:  # float64 is scaled before it narrows
        embeddings = embeddings.float()
    if embeddings.numel() == 0:
        return embeddings.float()
    exponent = torch.frexp(embeddings.abs().amax(1, keepdim=True)).exponent
    return torch.nn.functional.normalize(torch.ldexp(embeddings, -exponent), dim=1).float()


def ranked_dtype(scores: torch.Tensor) -> torch.Tensor:
    """Scores as the kernel compares them: float64 stays float64 (float32 would turn distinct
    scores into ties and huge values into infinities); narrower types widen to float32, exactly."""
    return scores if scores.dtype == torch.float64 else scores.to(torch.float32)


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        raise BenchError(f"{name} is empty (shape {tuple(tensor.shape)}); expected at least one row")
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise BenchError(f"{name} contains NaN or inf: {first_offending(bad)} (shape {tuple(tensor.shape)})")


def as_ids(name: str, ids, expected: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise BenchError(f"{name} must be one-dimensional, got shape {tuple(ids.shape)}")
    if ids.numel() != expected:
        raise BenchError(f"{name} has {ids.numel()} entries but there are {expected} {what}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise BenchError(f"{name} must hold integer person ids, got dtype {ids.dtype}")
    return ids.to(torch.int64)


def checked_embeddings(text_embeddings, image_embeddings, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 (count x dim) embeddings of the same dim, finite, unit length when asked."""
    text = torch.as_tensor(text_embeddings)
    image = torch.as_tensor(image_embeddings)
    for name, emb in (("text_embeddings", text), ("image_embeddings", image)):
        if emb.dim() != 2:
            raise BenchError(f"{name} must be (count x dim), got shape {tuple(emb.shape)}")
        check_finite(name, emb)
    if text.shape[1] != image.shape[1]:
        raise BenchError(
            f"embedding sizes differ: text_embeddings has dim {text.shape[1]}, "
            f"image_embeddings has dim {image.shape[1]}"
        )
    if normalize:
        text, image = unit_rows(text), unit_rows(image)
    text, image = text.to(torch.float32), image.to(torch.float32)
    for name, emb in (("text_embeddings", text), ("image_embeddings", image)):
        check_finite(f"{name} in float32", emb)
    return text, image
