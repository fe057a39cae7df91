"""Provenance: the hardware a number was measured on."""

from __future__ import annotations

import torch

from tbps_bench.cli import main
from tbps_bench.results import load_result


def test_provenance_records_the_hardware(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by oneDNN at its first use; recorded as given
    assert main(["eval", "-m", "oracle", "-d", "toy-pedes", "--limit", "8", "--out", str(tmp_path)]) == 0
    result = load_result(next(tmp_path.rglob("*.json")))
    hardware = result["provenance"]["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hardware["onednn_max_cpu_isa"] == "AVX2"
    assert hardware["torch_threads"] == torch.get_num_threads() and hardware["cpu_model"]
    assert {"cuda", "cudnn", "gpus", "deterministic_algorithms"} <= set(hardware)


def test_dirty_flag_counts_code_not_generated_leaderboards(tmp_path, monkeypatch):
    import subprocess

    import tbps_bench
    from tbps_bench.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "bench").mkdir()
    (tmp_path / "leaderboards").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "leaderboards" / "toy.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(tbps_bench, "__file__", str(tmp_path / "bench" / "__init__.py"))
    assert git_state()["dirty"] is False
    (tmp_path / "leaderboards" / "toy.md").write_text("regenerated\n")
    assert git_state()["dirty"] is False
    (tmp_path / "bench" / "__init__.py").write_text("# changed\n")
    assert git_state()["dirty"] is True
