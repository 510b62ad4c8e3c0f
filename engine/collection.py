"""Reading a collection back: catalog, descriptor and every image as a lazy xarray Dataset.

The store may be a local path or an object-store URL (engine.storage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import pyarrow as pa
import xarray as xr
from pyproj import CRS

from engine import catalog, storage, store
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
        from engine.notebook_repr import text_summary

        return text_summary(self)

    def _repr_html_(self) -> str:
        from engine.notebook_repr import html_summary

        return html_summary(self)

    @cached_property
    def catalog(self) -> pa.Table:
        """The GeoParquet catalog as a pyarrow table (one row per image, failed ones too)."""
        path = storage.join(self.path, "catalog.parquet")
        if not storage.exists(path):
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
        return json.loads(storage.read_text(storage.join(self.path, "service.json")))

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
        if meta.get("byref"):  # pixels at the source: the chunk warp, one task per chunk
            from engine.byref import lazy_dataset

            ds = lazy_dataset(self.path, image_id)
            return ds.chunk(chunks) if chunks else ds
        ds = xr.open_zarr(
            storage.zarr_store(self.path),
            group=f"images/{image_id}",
            consolidated=False,
            decode_coords="all",
            chunks=chunks if chunks is not None else {},
        )
        return ds

    @property
    def images(self) -> dict[str, xr.Dataset]:
        return {i: self.image(i) for i in self.image_ids}

    def mosaic(
        self,
        bbox: Sequence[float] | None = None,
        *,
        crs: Any = None,
        resolution: float | Sequence[float] | None = None,
        shape: Sequence[int] | None = None,
        method: str = "first",
        sort_by: str | None = None,
        ascending: bool = True,
        where: Any = None,
        bands: Sequence[str] | str | None = None,
        resampling: str = "nearest",
        chunks: int | Sequence[int] | dict[str, int] = 1024,
        bbox_crs: Any = None,
    ) -> xr.DataArray:
        """The images mosaicked onto one grid, as a lazy (band, y, x) DataArray.

        Nothing is read until ``.compute()`` (or ``.values``, a plot, ``to_raster``): each
        block of ``chunks`` pixels is one Dask task that reads only the windows of the
        images whose catalog bounds meet it, with the renderer exportImage uses.

        Parameters
        ----------
        bbox : (xmin, ymin, xmax, ymax), optional
            The area, in ``bbox_crs`` (default ``crs``); default the images' extent. Edges
            are snapped outward to multiples of the resolution (``gdalwarp -tap``).
        crs : CRS-like, optional
            Output CRS (``"EPSG:4326"``, an EPSG code, WKT, pyproj CRS); default the
            collection's.
        resolution : float or (x, y), optional
            Cell size in ``crs`` units; default the collection cell size (in another CRS,
            the size GDAL suggests for the collection extent).
        shape : (height, width), optional
            Instead of ``resolution``: cut the bbox, kept exactly (no snapping), into this
            many pixels, like exportImage's ``size``.
        method : {"first", "last", "min", "max", "mean"}
            The mosaic operation (ArcGIS MT_FIRST …): first/last valid pixel in mosaic
            order, or min/max/mean of the valid pixels.
        sort_by : str, optional
            Mosaic order by a catalog column, like ArcGIS's esriMosaicAttribute:
            ``"acquisition_time"``, ``"cloud_cover"`` or any numeric column; images
            without a value come last, ties keep catalog order. Default catalog order.
        ascending : bool
            Sort direction for ``sort_by``.
        where : str, pyarrow expression or boolean sequence, optional
            Which images take part: an ArcGIS-style SQL clause on catalog columns
            (``"cloud_cover < 20"``), a ``pyarrow.compute`` expression, or a mask per
            catalog row.
        bands : list of band names (or indexes), optional
            Default all bands.
        resampling : str
            GDAL resampling (``nearest``, ``bilinear``, ``cubic``, …).
        chunks : int, (y, x) or {"y": .., "x": ..}
            Output block size in pixels.
        bbox_crs : CRS-like, optional
            CRS of ``bbox`` when it is not ``crs`` (e.g. lon/lat bounds).

        Returns
        -------
        xarray.DataArray
            (band, y, x) with x/y pixel-centre coordinates, ``rio.crs``, ``rio.transform()``
            and ``rio.nodata`` (``_FillValue``). With ``nearest`` and first/last/min/max it
            holds the stored values in the stored type, nodata where no image has data;
            otherwise float64 (float types stay themselves) with NaN there.

        Examples
        --------
        >>> m = coll.mosaic(method="first", sort_by="cloud_cover", resolution=60)  # doctest: +SKIP
        >>> m.sel(band="b1").plot.imshow()  # doctest: +SKIP
        """
        from engine.lazy_mosaic import lazy_mosaic

        return lazy_mosaic(
            self,
            bbox=bbox,
            bbox_crs=bbox_crs,
            crs=crs,
            resolution=resolution,
            shape=shape,
            method=method,
            sort_by=sort_by,
            ascending=ascending,
            where=where,
            bands=bands,
            resampling=resampling,
            chunks=chunks,
        )

    def stack(
        self,
        bbox: Sequence[float] | None = None,
        *,
        crs: Any = None,
        resolution: float | Sequence[float] | None = None,
        shape: Sequence[int] | None = None,
        bands: Sequence[str] | str | None = None,
        time_field: str = "acquisition_time",
        where: Any = None,
        resampling: str = "nearest",
        chunks: int | Sequence[int] | dict[str, int] = 1024,
        bbox_crs: Any = None,
    ) -> xr.DataArray:
        """The images as a lazy (time, band, y, x) cube, as odc-stac / stackstac give.

        One time slice per distinct ``time_field`` value, in time order; images sharing a
        time are mosaicked (first valid pixel, catalog order) into one slice, and images
        without a time each get a slice at the end (time NaT). Only images meeting the
        bbox take part. Pixels no image covers are NaN for float types and the
        collection's nodata for integer types. Non-dimension coordinates per time:
        ``image_id`` and ``name`` (comma-joined when several images share a time) and
        ``cloud_cover`` (their mean). ``bbox``, ``crs``, ``resolution``, ``shape``, ``bands``,
        ``where``, ``resampling``, ``chunks`` and ``bbox_crs`` are as in :meth:`mosaic`.

        Examples
        --------
        >>> cube = coll.stack(resolution=60, bands=["b1"])  # doctest: +SKIP
        >>> cube.median("time")  # doctest: +SKIP
        """
        from engine.lazy_mosaic import lazy_stack

        return lazy_stack(
            self,
            bbox=bbox,
            bbox_crs=bbox_crs,
            crs=crs,
            resolution=resolution,
            shape=shape,
            bands=bands,
            time_field=time_field,
            where=where,
            resampling=resampling,
            chunks=chunks,
        )

    def datatree(self) -> xr.DataTree:
        return xr.open_datatree(
            storage.zarr_store(self.path), engine="zarr", decode_coords="all", consolidated=False
        )


def open_collection(path: str | os.PathLike[str]) -> Collection:
    """Open a collection store written by :func:`engine.create_image_collection`."""
    return Collection(path)
