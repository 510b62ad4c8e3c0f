"""The example notebook runs from top to bottom and shows what it promises: the collection
card with its footprint map, the plots, and a mosaic of the shape the collection implies."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from engine import open_collection

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "explore_collection.ipynb"


def _run_with_nbclient(nb: Any, cwd: Path) -> list[dict[str, Any]]:
    import nbclient

    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_example_notebook_runs_and_shows_a_mosaic(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
    pytest.importorskip("nbclient", reason="the test extra installs nbclient")
    pytest.importorskip("ipykernel", reason="the test extra installs ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("MOSAICFLOW_EXAMPLE_DIR", str(tmp_path))  # the kernel inherits it
    outputs = _run_with_nbclient(nb, tmp_path)

    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    card = next(h for h in html if "mosaicflow-collection" in h)
    assert card.count('<path class="mf-fp"') == 4  # the footprint map of four scenes
    assert "4 complete, 0 failed" in card
    assert len(pngs) == 4  # footprints, RGB mosaic, lon/lat max mosaic, observation count

    # the mosaic the notebook computed has the shape the collection's extent gives at 60 m
    coll = open_collection(tmp_path / "scenes.zarr")
    t = coll.catalog.filter(pc.equal(coll.catalog["status"], "complete"))
    ox, oy = coll.info.origin  # edges snap outward to multiples of 60 m from the origin
    x0, x1 = pc.min(t["xmin"]).as_py() - ox, pc.max(t["xmax"]).as_py() - ox
    y0, y1 = pc.min(t["ymin"]).as_py() - oy, pc.max(t["ymax"]).as_py() - oy
    rows = math.ceil(y1 / 60) - math.floor(y0 / 60)
    cols = math.ceil(x1 / 60) - math.floor(x0 / 60)
    expected = (3, rows, cols)
    shape = re.search(r"mosaic shape \((\d+), (\d+), (\d+)\)", text)
    assert shape is not None, text
    assert tuple(int(v) for v in shape.groups()) == expected
    stack = re.search(r"stack shape \((\d+), (\d+), (\d+), (\d+)\)", text)
    assert stack is not None and stack.group(1) == "4" and stack.group(2) == "1"
