"""GDAL reads an image band of the store where its Zarr driver knows zarr-python 3's codecs.

GDAL 3.11 is the first release that reads the final Zarr v3 `bytes` codec; rasterio 1.4's
bundled GDAL 3.10 refuses it. The test runs where rasterio carries GDAL >= 3.11 (rasterio
1.5 wheels bundle 3.12 on Python >= 3.12) and skips with that reason elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from engine import create_image_collection


def _gdal_version() -> tuple[int, int]:
    major, minor = rasterio.__gdal_version__.split(".")[:2]
    return int(major), int(minor)


@pytest.mark.skipif(
    _gdal_version() < (3, 11),
    reason=f"GDAL {rasterio.__gdal_version__} < 3.11 cannot read Zarr v3 'bytes'",
)
def test_gdal_opens_a_band_with_the_right_georeferencing(client, raster_factory, tmp_path):
    src = raster_factory(
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(100, 90),
        dtype="uint16",
        nodata=0,
    )
    result = create_image_collection(
        [str(src)],
        image_collection=str(tmp_path / "g.zarr"),
        context={"outSR": 3857, "resamplingMethod": "NEAREST"},
        client=client,
        tile_size=64,
    )
    rec = result.complete[0]
    with rasterio.open(f'ZARR:"{result.store}/images/{rec.image_id}/b1"') as ds:
        assert ds.crs.to_epsg() == 3857
        assert ds.transform.almost_equals(rec.grid.transform)
        expected = zarr.open_array(f"{result.store}/images/{rec.image_id}/b1", mode="r")[:]
        np.testing.assert_array_equal(ds.read(1), expected)
