"""Running on an existing Dask cluster: ``--scheduler ADDRESS`` and ``DASK_SCHEDULER_ADDRESS``.

The session's LocalCluster (two worker processes) stands in for a remote cluster: the
engine connects to its scheduler by address, registers the GDAL worker plugin, and the
pixels are computed in those worker processes.
"""

from __future__ import annotations

import json

import numpy as np
import zarr
from affine import Affine

from cluster.client import GDAL_WORKER_ENV
from engine import create_image_collection
from tests.conftest import write_raster
from tests.test_cli import run


def _inputs(tmp_path):
    return [
        write_raster(
            tmp_path / f"s{k}.tif",
            crs="EPSG:32633",
            dtype="uint16",
            nodata=0,
            bands=2,
            seed=k,
            transform=Affine(30, 0, 500_000 + 3000 * k, 0, -30, 4_650_000),
            shape=(120, 140),
        )
        for k in range(2)
    ]


def test_python_api_on_a_scheduler_address(client, tmp_path):
    files = _inputs(tmp_path)
    address = client.scheduler.address
    result = create_image_collection(
        [str(f) for f in files],
        image_collection=str(tmp_path / "a.zarr"),
        context={"outSR": 3857},
        scheduler=address,
    )
    assert result.exit_code == 0
    # the work ran on the cluster's workers, which got the GDAL settings by plugin
    env = client.run(lambda: __import__("os").environ.get("GDAL_CACHEMAX"))
    assert set(env.values()) == {GDAL_WORKER_ENV["GDAL_CACHEMAX"]}
    # same pixels as on the engine's own local cluster
    local = create_image_collection(
        [str(f) for f in files],
        image_collection=str(tmp_path / "b.zarr"),
        context={"outSR": 3857},
        workers=1,
    )
    assert sorted(r.checksum for r in result.complete) == sorted(r.checksum for r in local.complete)


def test_cli_uses_dask_scheduler_address(client, tmp_path):
    files = _inputs(tmp_path)
    store = tmp_path / "c.zarr"
    proc = run(
        "create",
        str(store),
        *map(str, files),
        "--out-sr",
        "3857",
        "--json",
        cwd=tmp_path,
        env={"DASK_SCHEDULER_ADDRESS": client.scheduler.address},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["complete"] == 2
    # the dashboard link printed is the cluster's, not a local one
    assert str(client.dashboard_link).split(":")[-1].split("/")[0] in proc.stderr
    arr = zarr.open_array(f"{store}/images/{out['image_ids'][0]}/b1", mode="r")[:]
    assert np.count_nonzero(arr) > 0
