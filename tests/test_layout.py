"""The package layout must not shadow Hugging Face ``datasets`` in any mode."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from paths import ROOT


def test_import_datasets_is_hugging_face_from_repo_root():
    code = "import datasets, sys; print(datasets.__file__); assert hasattr(datasets, 'load_dataset')"
    for flags in ([], ["-P"]):
        done = subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "site-packages" in done.stdout


def test_no_init_in_datasets_folder_and_no_test_datasets_package():
    """The test folders mirror the installed packages (tests/tbps_datasets/, not tests/datasets/) and
    are no packages themselves: nothing under tests/ can shadow an import."""
    assert not (ROOT / "datasets" / "__init__.py").exists()
    assert not list((ROOT / "tests").rglob("__init__.py"))
    assert not (ROOT / "tests" / "datasets").exists()


def test_spec_files_found_through_namespace_package():
    from tbps_datasets.specs import load_specs

    assert {"cuhk-pedes", "icfg-pedes", "rstpreid", "ufine6926", "ufine3c", "toy-pedes"} <= set(load_specs())


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source checkout")
def test_wheel_ships_only_the_three_packages(tmp_path):
    source = tmp_path / "source"  # build from a copy: a build inside the checkout leaves build/ behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "results", "*.egg-info"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("tbps_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tbps_bench", "tbps_models", "tbps_datasets"}
    assert "tbps_datasets/cuhk-pedes.toml" in names
