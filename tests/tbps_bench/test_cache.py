"""The feature cache serves only what it would compute again: other image files, edited files and
plugins get their own entries; a damaged entry is named, removed and computed again."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from tbps_bench import registry
from tbps_bench.cli import main
from tbps_bench.results import load_result

PIXEL_PLUGIN = """
import torch
from torchvision.transforms import functional as F

from tbps_bench.methods import Method
from tbps_bench.registry import register_method


@register_method("{name}")
class Pixels(Method):
    {name_line}

    def image_transform(self):
        return lambda image: F.to_tensor(F.resize(image, [16, 8]))

    def tokenize(self, captions):
        return {{"n": torch.tensor([[float(len(c) % 7), float(c.count("a"))] for c in captions])}}

    def encode_images(self, batch):
        return batch["pixels"].mean(dim=(2, 3))[:, :2] * {scale} + torch.tensor([0.0, 1.0])

    def encode_texts(self, batch):
        return batch["tokens"]["n"]
"""


def _plugin(folder: Path, name: str, scale: float = 1.0, named: bool = True, stem: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or name.replace('-', '_')}.py"
    name_line = f'name = "{name}"' if named else "pass  # no name: the class default"
    path.write_text(PIXEL_PLUGIN.format(name=name, name_line=name_line, scale=scale))
    return path


def _toy_copy(tmp_path: Path) -> Path:
    from tbps_datasets.toy import ensure_generated

    copy = tmp_path / "toy"
    shutil.copytree(ensure_generated(), copy)
    return copy


def _eval(args: list[str], out: Path) -> dict:
    assert main([*args, "--out", str(out)]) == 0
    return load_result(next(out.rglob("*.json")))


SIBLING_PLUGIN = """
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sibling_base import SCALE  # noqa: E402

import torch  # noqa: E402

from tbps_bench.methods import Method  # noqa: E402
from tbps_bench.registry import register_method  # noqa: E402


@register_method("uses-a-sibling")
class UsesASibling(Method):
    name = "uses-a-sibling"
    needs_pixels = False
    reads_checkpoint = False

    def encode_images(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 5, 5).float() * SCALE + torch.arange(5.0)

    def encode_texts(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 5, 5).float()
"""


def test_other_image_files_under_the_same_annotation_are_not_served_from_the_cache(tmp_path):
    plugin, copy = _plugin(tmp_path / "p", "mean-pixels"), _toy_copy(tmp_path)
    args = ["--plugin", str(plugin), "eval", "-m", "mean-pixels", "-d", "toy-pedes", "--data-root", str(copy)]
    first = _eval(args, tmp_path / "a")
    again = _eval(args, tmp_path / "b")
    assert again["timings"]["cache_hits"]["images"] and again["metrics"] == first["metrics"]
    for path in (copy / "imgs" / "test").glob("*.jpg"):  # the same annotation, test images blacked out
        Image.new("RGB", Image.open(path).size).save(path)
    black = _eval(args, tmp_path / "c")
    assert not black["timings"]["cache_hits"]["images"]
    assert black["metrics"] != first["metrics"]


def test_a_same_size_change_with_the_modification_time_set_back_is_not_served(tmp_path):
    """The inode change time, which no user can set back, keys the image manifest too."""
    import os

    plugin, copy = _plugin(tmp_path / "p", "mean-pixels"), _toy_copy(tmp_path)
    args = ["--plugin", str(plugin), "eval", "-m", "mean-pixels", "-d", "toy-pedes", "--data-root", str(copy)]
    _eval(args, tmp_path / "a")
    path = sorted((copy / "imgs" / "test").glob("*.jpg"))[0]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of the image data changed: same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    again = _eval(args, tmp_path / "b")
    assert not again["timings"]["cache_hits"]["images"]


def test_an_edited_sibling_module_of_a_plugin_is_not_served_from_the_cache(tmp_path, monkeypatch):
    """A plugin's source hash covers the modules it imports from its folder, not only its own file.
    Each evaluation starts as a fresh process would: no plugin or sibling module imported yet."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "uses_a_sibling.py").write_text(SIBLING_PLUGIN)
    (folder / "sibling_base.py").write_text("SCALE = 1.0\n")
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the plugin puts its folder first

    def unload_plugin() -> None:  # what an evaluation imported from the plugin's folder
        for name in [name for name in sys.modules if name == "sibling_base" or "uses_a_sibling" in name]:
            del sys.modules[name]

    def evaluate(out: str) -> dict:
        unload_plugin()
        monkeypatch.setattr(registry.METHODS, "_entries", None)
        monkeypatch.setattr(registry.METHODS, "_pending", [])
        monkeypatch.setattr(registry, "_loaded_files", set())
        args = ["--plugin", str(folder / "uses_a_sibling.py"), "eval", "-m", "uses-a-sibling", "-d", "toy-pedes"]
        return _eval([*args, "--limit", "20"], tmp_path / out)

    try:
        first, cached = evaluate("a"), evaluate("b")
        assert cached["timings"]["cache_hits"]["images"] and cached["metrics"] == first["metrics"]
        (folder / "sibling_base.py").write_text("SCALE = -4.0\n")
        edited = evaluate("c")
        assert not edited["timings"]["cache_hits"]["images"]
        assert edited["metrics"] != first["metrics"]
    finally:
        unload_plugin()


def test_methods_without_a_name_and_an_edited_plugin_get_their_own_cache_entries(tmp_path, monkeypatch):
    a = _plugin(tmp_path / "a", "plain-a", scale=1.0, named=False)
    b = _plugin(tmp_path / "b", "plain-b", scale=-3.0, named=False)
    args = ["--plugin", str(a), "--plugin", str(b), "eval", "-m", "plain-a,plain-b", "-d", "toy-pedes"]
    assert main([*args, "--limit", "40", "--out", str(tmp_path / "res")]) == 0
    results = {r["method"]["name"]: r for r in map(load_result, (tmp_path / "res").rglob("*.json"))}
    assert results["plain-b"]["metrics"] != results["plain-a"]["metrics"]
    assert not results["plain-b"]["timings"]["cache_hits"]["images"]
    # the same file name, registered name and class, edited: its source hash keys a new entry
    edited = _plugin(tmp_path / "edited", "plain-a", scale=-3.0, named=False, stem="plain_a")
    monkeypatch.setattr(registry.METHODS, "_entries", None)
    monkeypatch.setattr(registry.METHODS, "_pending", [])
    again = ["--plugin", str(edited), "eval", "-m", "plain-a", "-d", "toy-pedes", "--limit", "40"]
    result = _eval(again, tmp_path / "edited-res")
    assert not result["timings"]["cache_hits"]["images"]
    assert result["metrics"] == results["plain-b"]["metrics"]


def test_a_damaged_cache_entry_is_named_removed_and_recomputed(tmp_path, capsys):
    args = ["eval", "-m", "random", "-d", "toy-pedes", "--limit", "20"]
    first = _eval(args, tmp_path / "a")
    root = Path(__import__("os").environ["TBPS_BENCH_CACHE"]) / "features"
    damaged = sorted(root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)[-2:]
    damaged[0].write_bytes(damaged[0].read_bytes()[:40])  # cut short
    damaged[1].write_bytes(b"\x07" * 100)  # garbage
    healed = _eval(args, tmp_path / "b")
    err = capsys.readouterr().err
    assert err.count("is unreadable") == 2 and str(damaged[0]) in err
    assert healed["metrics"] == first["metrics"]
    assert _eval(args, tmp_path / "c")["timings"]["cache_hits"] == {"images": True, "texts": True}


def test_rerun_uses_the_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path / "fresh-cache"))
    out = tmp_path / "results"
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 0
    assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 0
    first, second = (json.loads(p.read_text()) for p in sorted(out.rglob("*.json")))
    hits = sorted([first["timings"]["cache_hits"]["images"], second["timings"]["cache_hits"]["images"]])
    assert hits == [False, True]
    assert first["metrics"] == second["metrics"]
