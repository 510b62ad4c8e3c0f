"""The ``Landsat 7 ETM+`` raster type: Landsat 7 ETM+ products (engine.rastertypes.landsat)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.rastertypes import landsat
from engine.rastertypes.base import ImageSource

NAME = landsat.LANDSAT_7
PATTERNS = landsat.PATTERNS


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> list[ImageSource]:
    """The image(s) of one Landsat 7 ETM+ product (two with productType "All")."""
    return landsat.probe_product(NAME, uri, gdal_path, name, params)


def probe_batch(
    refs: Sequence[Any], params: Mapping[str, Any] | None = None
) -> list[list[ImageSource] | Exception]:
    """The images of every ref, each Landsat 7 ETM+ product probed once (its .txt, .json and
    .xml, or its folder and its MTL, are one product)."""
    return landsat.probe_products(NAME, refs, params)


def recognise(uri: str, gdal_path: str) -> str | None:
    """``a Landsat 7 ETM+ Collection 2 Level-1 product (...)`` when the input is one, else None."""
    return landsat.recognise_for(NAME, uri, gdal_path)
