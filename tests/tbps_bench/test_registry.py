import json
import subprocess
import sys

import pytest

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.registry import Registry

from paths import ROOT

GROUP = "tbps_bench.tests_group"


def _registry(tmp_path, monkeypatch, entries: dict[str, str], dist: str = "someone-else") -> Registry:
    """A registry over a fake installed distribution that declares ``entries`` in its own group."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registry("method", GROUP)


def test_entry_points_are_lazy(tmp_path, monkeypatch):
    registry = _registry(tmp_path, monkeypatch, {"ghost": "module_that_does_not_exist:Thing"})
    assert registry.names() == ["ghost"]  # listing does not import
    assert registry.entry("ghost").origin == "entry point (someone-else)"
    with pytest.raises(BenchError, match="method 'ghost' .* failed to load .*ModuleNotFoundError"):
        registry.load("ghost")


def test_the_projects_own_entry_points_are_builtin(tmp_path, monkeypatch):
    registry = _registry(tmp_path, monkeypatch, {"mine": "x:y"}, dist="tbps_bench")
    assert registry.entry("mine").origin == "builtin"


def test_builtin_methods_and_datasets_come_from_pyproject():
    """Every name declared in pyproject.toml is registered as builtin and resolves to its target."""
    import tomllib

    from tbps_bench.registry import DATASETS, METHODS
    from tbps_datasets.specs import SpecTarget

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for registry, group in ((METHODS, "tbps_bench.models"), (DATASETS, "tbps_bench.datasets")):
        declared = project["entry-points"][group]
        assert {e.name for e in registry.entries() if e.origin == "builtin"} == set(declared)
    assert DATASETS.load("cuhk-pedes").spec.name == "cuhk-pedes"
    assert isinstance(DATASETS.load("toy-pedes"), SpecTarget)


def test_duplicate_names_raise(tmp_path, monkeypatch):
    registry = _registry(tmp_path, monkeypatch, {"a": "x:y"})
    registry.names()
    with pytest.raises(BenchError, match="duplicate method name 'a'"):
        registry.register("a", "z:w", origin="file (p.py)")


def test_did_you_mean(tmp_path, monkeypatch):
    registry = _registry(tmp_path, monkeypatch, {"nafs": "x:y", "cmpm-cmpc": "x:z"})
    with pytest.raises(BenchError, match="did you mean 'nafs'"):
        registry.entry("nafz")


PLUGIN = """
import torch
from tbps_bench.methods import Method
from tbps_bench.registry import register_method

@register_method("ones-{tag}")
class Ones(Method):
    name = "ones-{tag}"
    needs_pixels = False
    def encode_images(self, batch):
        return torch.ones(len(batch["index"]), 4)
    def encode_texts(self, batch):
        return torch.ones(len(batch["index"]), 4)
"""


def test_plugin_file_registers_and_evaluates(tmp_path, capsys):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN.format(tag="a"))
    assert main(["--plugin", str(plugin), "list"]) == 0
    listing = capsys.readouterr().out
    assert "ones-a" in listing and "file (my_plugin.py)" in listing
    out = tmp_path / "res"
    assert main(["--plugin", str(plugin), "eval", "-m", "ones-a", "-d", "toy-pedes", "--out", str(out)]) == 0
    assert list(out.rglob("*.json"))


def test_broken_plugin_file_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    assert main(["--plugin", str(plugin), "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: plugin file {plugin} raised on import: RuntimeError: boom"]


def test_list_load_reports_a_broken_entry_without_crashing(capsys, monkeypatch):
    from tbps_bench import registry

    monkeypatch.setattr(registry.METHODS, "_entries", None)
    monkeypatch.setattr(registry.METHODS, "_pending", [registry.Entry("broken", "no_such_mod:X", "python")])
    assert main(["list", "--load"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "[broken:" in out and "oracle" in out and "[ok]" in out


BAD_SHAPES = """
import torch
from tbps_bench.methods import Method
from tbps_bench.registry import register_method

@register_method("bad-{kind}")
class Bad(Method):
    needs_pixels = False
    name = "bad-{kind}"
    def encode_images(self, batch):
        n = len(batch["index"])
        if "{kind}" == "rows":
            return torch.ones(n + 1, 4)
        if "{kind}" == "nan":
            out = torch.ones(n, 4); out[0, 0] = float("nan"); return out
        return torch.ones(n, 4)
    def encode_texts(self, batch):
        return torch.ones(len(batch["index"]), 3 if "{kind}" == "dim" else 4)
"""


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("rows", "method 'bad-rows' encode_images returned 65 rows for 'embedding' but the batch has 64 items"),
        ("nan", "method 'bad-nan' encode_images returned NaN/inf features for 'embedding': 1 rows, first at row 0"),
        ("dim", "method 'bad-dim' returned image features (200, 4) and text features (400, 3)"),
    ],
)
def test_bad_plugin_outputs_are_named_and_others_complete(tmp_path, capsys, kind, message):
    plugin = tmp_path / f"bad_{kind}.py"
    plugin.write_text(BAD_SHAPES.format(kind=kind))
    out = tmp_path / "res"
    code = main(["--plugin", str(plugin), "eval", "-m", f"bad-{kind},oracle", "-d", "toy-pedes", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert message in err
    assert [p.parent.name for p in out.rglob("*.json")] == ["oracle"]


def test_readme_add_a_method_example_runs(tmp_path, capsys):

    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n# my_method.py")[1].split("```")[0]
    plugin = tmp_path / "my_method.py"
    plugin.write_text("# my_method.py" + code)
    out = tmp_path / "res"
    assert main(["--plugin", str(plugin), "eval", "-m", "mean-colour", "-d", "toy-pedes", "--out", str(out)]) == 0
    assert "mean-colour @ toy-pedes/test" in capsys.readouterr().out


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch, capsys):
    """A distribution declaring the tbps_bench.models group shows up with no change in the host."""
    (tmp_path / "ep_plugin_mod.py").write_text(PLUGIN.format(tag="ep"))
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tbps_bench.models]\nones-ep-entry = ep_plugin_mod:Ones\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "ones-ep-entry" in listing and "entry point (ep-plugin)" in listing


def test_a_plugin_that_fails_to_import_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    from tbps_bench import registry

    monkeypatch.setattr(registry.METHODS, "_entries", None)
    monkeypatch.setattr(registry.METHODS, "_pending", [registry.Entry("broken", "no_such_module:X", "python")])
    out = tmp_path / "res"
    assert main(["eval", "-m", "broken,oracle", "-d", "toy-pedes", "--limit", "8", "--out", str(out)]) == 1
    assert "error: broken on toy-pedes: method 'broken' (python) failed to load" in capsys.readouterr().err
    assert [p.parent.name for p in out.rglob("*.json")] == ["oracle"]


def _readme_block(marker: str) -> str:
    readme = (ROOT / "docs" / "plugins.md").read_text()
    return marker + readme.split(marker, 1)[1].split("```", 1)[0]


def test_separately_installed_method_package(tmp_path, monkeypatch, capsys):
    """The plugin page's package example, built and installed with pip, is listed and evaluates (the
    install in a pip process; its entry point found on the path, as a fresh process would find it)."""
    package = tmp_path / "tbps-grey-level"
    package.mkdir()
    (package / "pyproject.toml").write_text(_readme_block("# pyproject.toml\n"))
    (package / "tbps_grey_level.py").write_text(_readme_block("# tbps_grey_level.py\n"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet"]
    subprocess.run([*pip, "--target", str(site), str(package)], check=True, capture_output=True, timeout=300)
    monkeypatch.syspath_prepend(str(site))
    try:
        assert main(["list"]) == 0
        listing = capsys.readouterr().out
        assert "grey-level" in listing and "entry point (tbps-grey-level)" in listing
        out = tmp_path / "res"
        assert main(["eval", "-m", "grey-level", "-d", "toy-pedes", "--out", str(out)]) == 0
        result = json.loads(next(out.rglob("*.json")).read_text())
        assert result["method"]["origin"] == "entry point (tbps-grey-level)"
        assert sys.modules["tbps_grey_level"].__file__ == str(site / "tbps_grey_level.py")
    finally:
        sys.modules.pop("tbps_grey_level", None)
