"""Where the suite's committed inputs are, for test modules at any depth."""

from pathlib import Path

#: the repository checkout
ROOT = Path(__file__).resolve().parents[2]
#: the committed fixtures: the authors'-code references, smoke inputs, plugin files
FIXTURES = ROOT / "tests" / "fixtures"
