"""``tbps-bench demo``: its numbers against the committed leaderboard."""

from __future__ import annotations

import json


def test_the_demo_compares_its_numbers_with_the_committed_leaderboard(tmp_path, capsys):
    from tbps_bench.cli.demo_cmd import _committed, _compare

    (tmp_path / "toy-pedes.csv").write_text(
        "split,domain,direction,method,source,runs,R1,R1_ci_low,R1_ci_high\n"
        "test,in-domain,t2i,nafs-tiny (config=nafs-tiny),this project,1,40.75,36.0,45.5\n"
        "test,in-domain,i2t,nafs-tiny (config=nafs-tiny),this project,1,45.0,38.5,51.5\n"
        "test,in-domain,t2i,NAFS,Some paper,,59.9,,\n"
    )
    committed = _committed(tmp_path)
    assert committed == {("nafs-tiny", "t2i"): (40.75, 36.0, 45.5), ("nafs-tiny", "i2t"): (45.0, 38.5, 51.5)}
    _compare({"nafs-tiny @ toy-pedes/test": {"t2i": {"R1": 32.75}, "i2t": {"R1": 44.0}}}, committed)
    err = capsys.readouterr().err
    assert "nafs-tiny t2i R@1 32.75; committed 40.75 (95% CI 36.00-45.50): OUTSIDE" in err
    assert "nafs-tiny i2t R@1 44.00; committed 45.00 (95% CI 38.50-51.50): inside" in err


def test_the_demo_says_how_to_get_the_committed_bits_on_other_instruction_sets(tmp_path, monkeypatch, capsys):

    import tbps_bench.provenance as provenance
    from tbps_bench.cli.demo_cmd import _committed_instruction_sets, _same_bits_hint

    committed_file = tmp_path / "demo" / "toy-pedes" / "nafs-tiny" / "run_test.json"
    committed_file.parent.mkdir(parents=True)
    committed_file.write_text(json.dumps({"provenance": {"hardware": {"cpu_capability": "AVX2"}}}))
    (committed_file.parent / "broken.json").write_text("{not json")  # ignored: it holds no instruction set
    committed = _committed_instruction_sets(tmp_path / "demo")
    assert committed == {("AVX2", "AVX2")}  # an AVX2-only CPU: oneDNN's own choice is AVX2 too

    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX512", "onednn_max_cpu_isa": None})
    _same_bits_hint(committed)
    err = capsys.readouterr().err
    assert "instruction sets AVX2 / AVX2 (ATen / oneDNN), this run with AVX512 / uncapped" in err
    assert "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 tbps-bench demo" in err

    # capped to the committed run's instruction sets (or on such a CPU): nothing to say
    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX2", "onednn_max_cpu_isa": "AVX2"})
    _same_bits_hint(committed)
    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX2", "onednn_max_cpu_isa": None})
    _same_bits_hint(committed)
    assert capsys.readouterr().err == ""
