"""Reading a collection back: catalog, descriptor and every image as a lazy xarray Dataset."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import xarray as xr
from pyproj import CRS

from engine import catalog, store
from engine.errors import StoreError
from engine.mosaic import ImageIndex
from engine.records import CollectionInfo


class Collection:
    """An opened collection store.

    Examples
    --------
    >>> coll = open_collection("out.zarr")  # doctest: +SKIP
    >>> ds = coll.image(coll.image_ids[0])  # lazy, with rio.crs / rio.transform()  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = store.store_path(path)
        self.info: CollectionInfo = store.read_info(self.path)

    def __repr__(self) -> str:
        return f"<Collection {self.info.name!r} at {self.path}: {len(self.image_ids)} images>"

    @cached_property
    def catalog(self) -> pa.Table:
        """The GeoParquet catalog as a pyarrow table (one row per image, failed ones too)."""
        path = Path(self.path) / "catalog.parquet"
        if not path.exists():
            raise StoreError(
                f"{self.path} has no catalog.parquet: the collection was never finished"
            )
        return catalog.read_catalog(path)

    @cached_property
    def mosaic_index(self) -> ImageIndex:
        """The store's image arrays opened for mosaics (:mod:`engine.mosaic`), cached."""
        return ImageIndex(self.path, CRS.from_wkt(self.info.crs_wkt))

    @cached_property
    def descriptor(self) -> dict[str, Any]:
        return json.loads((Path(self.path) / "service.json").read_text())

    @property
    def image_ids(self) -> list[str]:
        """Ids of the complete images, in catalog order."""
        t = self.catalog
        return [
            i
            for i, s in zip(t["image_id"].to_pylist(), t["status"].to_pylist(), strict=True)
            if s == "complete"
        ]

    def image(self, image_id: str, *, chunks: Any = None) -> xr.Dataset:
        """One image as a lazy Dataset (Dask-backed, chunked like the store)."""
        meta = store.image_meta(self.path, image_id)
        if meta is None or meta.get("status") != "complete":
            raise StoreError(f"image {image_id!r} is not a complete image of {self.path}")
        ds = xr.open_zarr(
            self.path,
            group=f"images/{image_id}",
            consolidated=False,
            decode_coords="all",
            chunks=chunks if chunks is not None else {},
        )
        return ds

    @property
    def images(self) -> dict[str, xr.Dataset]:
        return {i: self.image(i) for i in self.image_ids}

    def datatree(self) -> xr.DataTree:
        return xr.open_datatree(self.path, engine="zarr", decode_coords="all", consolidated=True)


def open_collection(path: str | os.PathLike[str]) -> Collection:
    """Open a collection store written by :func:`engine.create_image_collection`."""
    return Collection(path)
