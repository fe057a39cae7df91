"""The documentation cannot rot: links resolve, the README's fast commands run as written, the
generated tables are current, every method has its section, and every command's help names its page."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

from tbps_bench.cli import _leaf_parsers, _parser, main

from paths import ROOT

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    return "".join(c for c in heading.lower() if c.isalnum() or c in " -_").strip().replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {
        _slug(line.lstrip("#").strip())
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {target}"


def test_readme_is_a_short_guide_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 12_000
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_fast_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ``tbps-bench`` line of the README that needs no dataset copy, checkpoint or training."""
    monkeypatch.chdir(tmp_path)
    plugin = next(block for block in _readme_blocks("python") if block.startswith("# my_method.py"))
    (tmp_path / "my_method.py").write_text(plugin, encoding="utf-8")
    commands = [plugin.splitlines()[0].split("--", 1)[1].strip()]
    for block in _readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            slow = ("/data", ".pth", ".npz", "demo", "--check", "leaderboard build")
            if command.startswith("tbps-bench") and not any(word in command for word in slow):
                commands.append(command)
    assert len(commands) >= 3, commands
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, command
    out = capsys.readouterr().out
    assert "mean-colour @ toy-pedes/test" in out and "oracle @ toy-pedes/test" in out


def test_generated_tables_are_current_and_every_method_has_a_section():
    tables = runpy.run_path(str(ROOT / "scripts" / "docs_tables.py"))
    assert tables["main"](["--check"]) == 0
    assert "no section yet" not in tables["methods_table"]()


def test_every_command_help_names_its_page():
    parser = _parser()
    assert "docs/" in parser.format_help()
    for command in _leaf_parsers(parser):
        page = re.search(r"Documentation: (\S+) in", command.format_help().replace("\n", " "))
        assert page and (ROOT / page.group(1)).is_file(), command.prog
