"""The GPU check script runs anywhere: without CUDA it prints its table with every GPU part skipped."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from paths import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs for real")
def test_gpu_check_without_cuda_says_what_it_skipped(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("GPU check on no CUDA device")
    rows = [line for line in out if line.startswith("| ") and not line.startswith("| part ")]
    assert len(rows) == len(module.PARTS) == 6
    assert all("| skipped | no CUDA device: this part needs one |" in row for row in rows)
