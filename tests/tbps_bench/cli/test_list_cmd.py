"""``tbps-bench list``: every registered method and dataset with its origin."""

from __future__ import annotations

from tbps_bench.cli import main


def test_list_shows_builtins_with_origin(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("oracle", "random", "cuhk-pedes", "icfg-pedes", "rstpreid", "ufine6926", "ufine3c", "toy-pedes"):
        assert name in out
    assert "builtin" in out
