"""The official ArcGIS API for Python against the real ``mosaicflow serve`` over https.

The ``arcgis`` package is large (≈ 640 MB with its dependencies), so it lives in its own
environment: ``make arcgis-env`` creates ``.venv-arcgis``; ``MOSAICFLOW_ARCGIS_PYTHON`` may
name another interpreter that has it. The client runs in that interpreter as a subprocess
and prints what it read as JSON; without it the test skips and says how to get it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from affine import Affine

from engine import create_image_collection
from tests.conftest import write_raster
from tests.loopback import free_port, self_signed_cert, serve_command
from tests.test_cli import _script

REPO = Path(__file__).resolve().parents[1]

CLIENT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from arcgis.gis import GIS
from arcgis.raster import ImageryLayer

base = sys.argv[1]
gis = GIS(base + "/portal", verify_cert=False)
layer = ImageryLayer(base + "/arcgis/rest/services/Hosted/served/ImageServer", gis=gis)
props = layer.properties
extent = dict(layer.extent)
exported = layer.export_image(bbox=layer.extent, size=[200, 150], f="json")
print(json.dumps({
    "portal": gis.properties["portalName"],
    "name": props["name"],
    "bandCount": props["bandCount"],
    "extent": extent,
    "export": exported,
    "count": layer.query(return_count_only=True),
}, default=str))
"""


def _arcgis_python() -> str:
    candidates = [
        os.environ.get("MOSAICFLOW_ARCGIS_PYTHON", ""),
        str(REPO / ".venv-arcgis/bin/python"),
    ]
    for python in filter(None, candidates):
        if Path(python).exists():
            probe = subprocess.run([python, "-c", "import arcgis.raster"], capture_output=True)
            if probe.returncode == 0:
                return python
    pytest.skip(
        "the ArcGIS API for Python is not installed: run `make arcgis-env` (creates"
        " .venv-arcgis) or set MOSAICFLOW_ARCGIS_PYTHON to an interpreter that has `arcgis`"
    )


def test_arcgis_api_for_python_reads_a_collection(client, tmp_path):
    python = _arcgis_python()
    root = tmp_path / "store"
    sources = [
        str(
            write_raster(
                tmp_path / f"s{i}.tif",
                crs="EPSG:32633",
                transform=Affine(30, 0, 500_000 + i * 1500, 0, -30, 4_650_000),
                shape=(80, 90),
                nodata=0,
                seed=i,
            )
        )
        for i in range(3)
    ]
    create_image_collection(sources, image_collection=str(root / "served.zarr"), client=client)
    descriptor = json.loads((root / "served.zarr" / "service.json").read_text())
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    args = [_script(), "serve", "--root", str(root), "--port", str(port)]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    with serve_command(args, base, verify=str(cert)):
        run = subprocess.run(
            [python, "-c", CLIENT, base], capture_output=True, text=True, timeout=300
        )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["portal"] == "mosaicflow"
    assert got["name"] == "served" and got["bandCount"] == 1
    for k in ("xmin", "ymin", "xmax", "ymax"):
        assert got["extent"][k] == pytest.approx(descriptor["extent"][k])
    assert got["export"]["width"] == 200 and got["export"]["height"] == 150
    assert got["export"]["href"].startswith(base) and "exportImage" in got["export"]["href"]
    assert got["count"] == 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
