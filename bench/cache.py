"""The feature cache: encoded features on disk, keyed by everything that determines them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tbps_bench.features import Features
from tbps_bench.fileio import atomic_path, cache_root, sha256_json

#: 3: text entries carry each caption's truncation flag (entries of version 2 lack it)
FEATURE_CACHE_VERSION = 3


class FeatureCache:
    """Encoded features keyed by method, checkpoint hash, annotation hash and preprocessing."""

    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = (root or cache_root()) / "features"
        self.enabled = enabled

    def path(self, key_fields: dict[str, Any]) -> Path:
        return self.root / f"{sha256_json({'v': FEATURE_CACHE_VERSION, **key_fields})[:40]}.safetensors"

    def get_or_compute(self, key_fields: dict[str, Any], compute: Callable[[], Features]) -> tuple[Features, bool]:
        path = self.path(key_fields)
        if self.enabled and path.is_file():
            try:
                return load_file(str(path)), True
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for damaged files
                note = f"note: feature cache entry {path} is unreadable ({exc}); removed, encoding again"
                print(note, file=sys.stderr)
                path.unlink(missing_ok=True)
        features = compute()
        if self.enabled:
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
        return features, False
