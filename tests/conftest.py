"""Shared fixtures: a real Dask cluster, rasters made in code, the shared sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster (two worker processes) for the whole test session."""
    from distributed import Client, LocalCluster

    from cluster.client import GDAL_WORKER_ENV

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            memory_limit=0,
            env=GDAL_WORKER_ENV,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"the shared sample data folder {SHARED_DATA} is absent (it lives beside the repository)"
        )
    return SHARED_DATA


def smooth_field(
    shape: tuple[int, int], seed: int = 0, lo: float = 0.0, hi: float = 250.0
) -> np.ndarray:
    """A deterministic smooth-plus-detail field (realistic for resampling tests)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype("float64")
    f = np.zeros(shape)
    for k in range(1, 5):
        a, b, p, q = rng.uniform(0.5, 3.0, 4)
        f += (
            np.sin(x * a * k / max(w, 1) * np.pi + p)
            * np.cos(y * b * k / max(h, 1) * np.pi + q)
            / k
        )
    f += rng.normal(0, 0.05, shape)
    f = (f - f.min()) / max(np.ptp(f), 1e-9)
    return lo + f * (hi - lo)


def write_raster(
    path: Path,
    *,
    crs,
    transform: Affine,
    shape: tuple[int, int],
    dtype: str = "uint8",
    nodata=None,
    bands: int = 1,
    seed: int = 0,
    collar: bool = True,
    tiled: bool = True,
    data: np.ndarray | None = None,
) -> Path:
    """Write a GeoTIFF with smooth content and (optionally) a nodata collar."""
    h, w = shape
    if data is None:
        hi = {"uint8": 250, "int16": 3000, "uint16": 60000, "float32": 1000.0, "int32": 1e6}.get(
            dtype, 200
        )
        lo = -3000 if dtype == "int16" else 1
        data = np.stack([smooth_field(shape, seed + b, lo, hi) for b in range(bands)]).astype(dtype)
        if collar and nodata is not None and h > 8 and w > 8:
            yy, xx = np.mgrid[0:h, 0:w]
            outside = (xx + yy) < min(h, w) // 4  # a diagonal nodata corner
            data[:, outside] = nodata
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": data.shape[0],
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled and h >= 16 and w >= 16:
        profile.update(
            tiled=True,
            blockxsize=16 * max(1, min(w, 256) // 16),
            blockysize=16 * max(1, min(h, 256) // 16),
        )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def raster_factory(tmp_path):
    counter = iter(range(10_000))

    def make(**kw) -> Path:
        return write_raster(tmp_path / f"r{next(counter)}.tif", **kw)

    return make
