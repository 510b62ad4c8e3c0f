"""``mosaicflow demo``: generate a small realistic input set and ingest it for real.

The scenes come from the same generator as the benchmarks (engine/synth.py): tilted
Landsat-like UTM scenes with nodata collars, overlapping along a path, tiled and deflated.
They are reprojected to Web Mercator at 60 m with bilinear resampling on a local Dask
cluster, and the collection is verified by re-reading every chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.ingest import IngestResult, create_image_collection


def run_demo(
    out_dir: Path,
    *,
    scenes: int = 4,
    size: int = 1024,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Any = None,
) -> IngestResult:
    from engine.synth import make_scenes
    from engine.verify import verify_collection

    out_dir = Path(out_dir)
    inputs = make_scenes(out_dir / "inputs", n=scenes, size=size)
    result = create_image_collection(
        [str(p) for p in inputs],
        image_collection={"uri": str(out_dir / "demo.zarr"), "serviceProperties": {"name": "demo"}},
        context={"outSR": {"wkid": 102100}, "cellSize": 60, "resamplingMethod": "BILINEAR"},
        overwrite=True,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
    )
    check = verify_collection(result.store)
    if progress is not None:
        progress({"stage": "verified", "checked": check["checked"], "bad": check["bad"]})
    print(
        f"demo collection: {result.store}\n"
        f"  open it:  python -c \"from engine import open_collection; print(open_collection('{result.store}'))\"\n"
        f"  inspect:  mosaicflow info {result.store}\n"
        f"  verified: {check['checked']} images, {check['bad']} bad"
    )
    return result
