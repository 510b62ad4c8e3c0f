"""The ``Landsat 8`` raster type: Landsat 8 and 9 OLI/TIRS products (engine.rastertypes.landsat)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.rastertypes import landsat
from engine.rastertypes.base import ImageSource

NAME = landsat.LANDSAT_8
PATTERNS = landsat.PATTERNS


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> list[ImageSource]:
    """The image(s) of one Landsat 8 or 9 product (two with productType "All")."""
    return landsat.probe_product(NAME, uri, gdal_path, name, params)


def probe_batch(
    refs: Sequence[Any], params: Mapping[str, Any] | None = None
) -> list[list[ImageSource] | Exception]:
    """The images of every ref, each Landsat 8 or 9 product probed once (its .txt, .json and
    .xml, or its folder and its MTL, are one product)."""
    return landsat.probe_products(NAME, refs, params)


def recognise(uri: str, gdal_path: str) -> str | None:
    """``a Landsat 8 Collection 2 Level-2 product (...)`` when the input is one, else None."""
    return landsat.recognise_for(NAME, uri, gdal_path)
