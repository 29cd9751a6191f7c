"""Every notebook in notebooks/ runs at reduced size and produces its figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))

#: The figure file each notebook saves (PIMSIM_NOTEBOOK_FIGURES).
FIGURES = {
    "channel_scaling": "channel_scaling.png",
    "asic_clock": "asic_clock.png",
    "mac_lanes_data_rate": "mac_lanes_data_rate.png",
    "mapping_strategies": "mapping_strategies.png",
    "energy_breakdown": "energy_breakdown.png",
    "pareto": "pareto.png",
    "gap_to_bound": "gap_to_bound.png",
}


@pytest.mark.unit
def test_every_notebook_is_listed_and_stored_without_outputs():
    assert {p.stem for p in NOTEBOOKS} == set(FIGURES)
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb.get("cells", []):
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.e2e
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_reduced_size(path, tmp_path, monkeypatch):
    import jupytext  # installed by the test extra
    import nbclient
    monkeypatch.setenv("PIMSIM_NOTEBOOK_SMALL", "1")
    figures = tmp_path / "figures"  # made by the notebook
    monkeypatch.setenv("PIMSIM_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    pythonpath = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), pythonpath])))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    figure = figures / FIGURES[path.stem]
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = [o for cell in nb.cells for o in cell.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert shown, "the notebook displayed no figure"
