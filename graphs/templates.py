"""The template task of an image: its group's metadata and coordinates, no pixels.

One task per image writes level 0 (engine.store.create_image_template) and its overview
levels, or a byref image's metadata-only group; the image's chunk tasks depend on it.
Templates are written on the workers, beside the pixels, not one after another by the
client: ~40 ms an image through xarray, which was most of a 10,000-image run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import store
from graphs.chunk import ImageJob
from graphs.overviews import level_grid, pyramid_job


@dataclass(frozen=True)
class ImageTemplate:
    """The image's group attributes beyond its job: record fields and per-band CF attrs."""

    attrs: dict[str, Any]
    band_attrs: tuple[dict[str, Any], ...]


def write_template(job: ImageJob, template: ImageTemplate) -> None:
    """Write ``job``'s image group (status ``writing``; its finish task commits it).

    A group left by an earlier run is replaced whole (its stale chunks go with it). A group
    this run wrote already is kept: Dask re-runs a template task whose worker died while
    the image's other tasks still needed its result, and rewriting the group then would
    delete the chunks other workers had written (the run's id is in ``template.attrs``).
    """
    from engine.byref import create_group  # byref imports the chunk tasks

    meta = store.image_meta(job.store, job.image_id)
    if meta is not None and meta.get("run") == template.attrs["run"]:
        return

    if not job.write:  # byref: the recipe to re-read the pixels, no arrays
        create_group(job.store, job.image_id, job, template.attrs, list(template.band_attrs))
        return
    pyr = pyramid_job(job)
    grids = [level_grid(job.grid, k) for k in range(pyr.levels + 1)]
    store.create_image_template(
        job.store, job.image_id, job.grid, list(job.variables), job.dtype, job.nodata,
        job.tile, attrs=template.attrs, band_attrs=list(template.band_attrs),
        group_attrs=store.multiscales_attrs(grids, list(job.variables), list(pyr.methods)),
    )  # fmt: skip
    store.create_overview_templates(
        job.store, job.image_id, grids, list(job.variables), job.dtype, job.nodata, job.tile,
        list(pyr.methods),
    )  # fmt: skip
