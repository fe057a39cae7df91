"""Dataset spec files (``<name>.toml`` beside this module): metadata next to the loader.

A dataset with the PEDES JSON schema is one spec file and no code. The spec names the annotation
files to accept, the image key, expected counts per split, citation and access note; ``adapter``
names the class that reads it, so a dataset with another schema brings its own adapter.
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbps_bench.errors import BenchError


def _package_dirs() -> list[Path]:
    # tbps_datasets is a namespace package: importlib.resources.files fails on it in editable installs
    spec = importlib.util.find_spec("tbps_datasets")
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations if Path(p).is_dir()]


@dataclass(frozen=True)
class SplitCounts:
    ids: int
    images: int
    captions: int


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    citation: str
    access: str
    folder: str
    image_dir: str
    annotation_files: tuple[str, ...]
    image_keys: tuple[str, ...]
    adapter: str
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    total: SplitCounts | None = None
    evaluation_only: bool = False
    source_key: str | None = None
    generator: str | None = None
    note: str = ""
    path: Path | None = None

    @classmethod
    def from_toml(cls, path: Path) -> DatasetSpec:
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise BenchError(f"{path}: invalid TOML: {exc}") from exc
        try:
            return cls(
                name=raw["name"],
                title=raw.get("title", raw["name"]),
                citation=raw.get("citation", ""),
                access=raw.get("access", ""),
                folder=raw.get("folder", raw["name"]),
                image_dir=raw.get("image_dir", "imgs"),
                annotation_files=tuple(raw["annotation_files"]),
                image_keys=tuple(raw.get("image_keys", ["file_path"])),
                adapter=raw.get("adapter", "tbps_datasets.pedes:PedesDataset"),
                splits={k: SplitCounts(**v) for k, v in raw.get("splits", {}).items()},
                total=SplitCounts(**raw["total"]) if "total" in raw else None,
                evaluation_only=bool(raw.get("evaluation_only", False)),
                source_key=raw.get("source_key"),
                generator=raw.get("generator"),
                note=raw.get("note", ""),
                path=path,
            )
        except (KeyError, TypeError) as exc:
            raise BenchError(f"{path}: spec is missing or mistypes {exc}") from exc


def load_specs() -> dict[str, DatasetSpec]:
    specs: dict[str, DatasetSpec] = {}
    for directory in _package_dirs():
        for path in sorted(directory.glob("*.toml")):
            spec = DatasetSpec.from_toml(path)
            specs.setdefault(spec.name, spec)
    return specs


class SpecTarget:
    """A registry target that builds the spec's adapter only when the dataset is used."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec

    def __call__(self, **kwargs: Any):
        from tbps_bench.registry import resolve

        return resolve(self.spec.adapter)(self.spec, **kwargs)

    def __repr__(self) -> str:
        return f"{self.spec.adapter} with {self.spec.path.name if self.spec.path else self.spec.name}"


def __getattr__(attribute: str) -> SpecTarget:
    """``tbps_datasets.specs:cuhk_pedes`` is the adapter of ``cuhk-pedes.toml`` (the entry points'
    targets): a dataset with the PEDES schema is a spec file plus one entry-point line."""
    specs = load_specs()
    name = attribute.replace("_", "-")
    if name not in specs:
        raise AttributeError(f"no dataset spec '{name}.toml' beside {__name__}")
    return SpecTarget(specs[name])
