"""Documentation stays true: README commands run, every parameter is documented."""

from __future__ import annotations

import re
import shlex

import pytest

from _support import ROOT
from pimsim.cli import main
from pimsim.config import DERIVED_TIMING, PRESET_SECTIONS, TIMING_PARAMETERS

pytestmark = pytest.mark.e2e


def _readme_pimsim_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("pimsim ")]


def test_readme_has_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"```bash\n", setup)) == 2
    assert "bash scripts/test.sh" in setup and "pimsim simulate" in setup
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", _readme_pimsim_commands())
def test_readme_example_runs(command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err


def test_every_parameter_is_documented():
    doc = (ROOT / "docs" / "config.md").read_text()
    for sec, params in PRESET_SECTIONS.items():
        for p in params:
            assert f"`{p.key}`" in doc, (sec, p.key)
    for name in list(TIMING_PARAMETERS) + list(DERIVED_TIMING):
        assert f"`{name}`" in doc, name


def test_readme_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_config_doc_tables_are_current():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"])
    assert proc.returncode == 0, "docs/config.md is stale: run python scripts/gen_config_doc.py"
