"""NAFS (Gao et al. 2021): staircase image network, BERT with sub-sentence locality, contextual
non-local attention. See ``model.py`` for the network and ``scoring.py`` for the fast pairwise score."""

from tbps_models.nafs.checkpoint import (
    build_from_official,
    load_official_checkpoint,
    load_own_checkpoint,
    save_own_checkpoint,
)
from tbps_models.nafs.config import NafsConfig
from tbps_models.nafs.model import Nafs

__all__ = [
    "Nafs",
    "NafsConfig",
    "build_from_official",
    "load_official_checkpoint",
    "load_own_checkpoint",
    "save_own_checkpoint",
]
