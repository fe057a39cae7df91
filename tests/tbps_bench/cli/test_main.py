"""The command line itself: ``--plugin`` before or after the command, ``python -m tbps_bench``."""

from __future__ import annotations

from tbps_bench.cli import main


def test_plugin_files_may_come_before_or_after_the_command(tmp_path, capsys):
    for name in ("before", "after"):
        (tmp_path / f"{name}.py").write_text(
            "from tbps_bench.registry import register_method\n"
            "from tbps_models.random import RandomMethod\n"
            f"register_method('random-{name}', RandomMethod)\n"
        )
    before, after = str(tmp_path / "before.py"), str(tmp_path / "after.py")
    assert main(["--plugin", before, "list", "--plugin", after]) == 0
    listed = capsys.readouterr().out
    assert "random-before" in listed and "random-after" in listed
    assert main(["data", "info", "-d", "toy-pedes", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "missing.py" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tbps_bench", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "oracle" in done.stdout
