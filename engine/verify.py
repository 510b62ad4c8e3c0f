"""``mosaicflow verify``: re-read every chunk of every complete image and check its checksum."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import zarr

from engine import storage, store
from engine.collection import open_collection
from graphs import kernels


def image_checksum(path: str, image_id: str, variables: list[str]) -> str:
    """Recompute an image's checksum from its stored chunks (the chunk task's rule: every
    chunk holding data was written, and only those, so the written chunks are digested)."""
    group = store.image_group_path(path, image_id)
    arrays = [zarr.open_array(storage.zarr_store(f"{group}/{v}"), mode="r") for v in variables]
    h, w = arrays[0].shape
    ch, cw = arrays[0].chunks
    written = _remote_chunks(group, variables) if storage.is_remote(group) else None
    digests = []
    for i in range(math.ceil(h / ch)):
        for j in range(math.ceil(w / cw)):
            if written is not None and (i, j) not in written:
                continue
            if written is None and not any(_chunk_written(group, v, i, j) for v in variables):
                continue
            sl = (slice(i * ch, min((i + 1) * ch, h)), slice(j * cw, min((j + 1) * cw, w)))
            block = np.stack([a[sl] for a in arrays])
            digests.append((i, j, kernels.chunk_digest(block)))
    return kernels.combine_digests(digests, (h, w), str(arrays[0].dtype))


def _chunk_written(group: str, variable: str, i: int, j: int) -> bool:
    """Whether chunk (i, j) of a band exists in the store (zarr v3 default key "c/i/j")."""
    return os.path.exists(os.path.join(group, variable, "c", str(i), str(j)))


def _remote_chunks(group: str, variables: list[str]) -> set[tuple[int, int]]:
    """The chunks (i, j) any band holds in an object store: one listing per band instead
    of a request per chunk."""
    found = set()
    for v in variables:
        for key in storage.list_tree(f"{group}/{v}/c"):
            i, _, j = key.partition("/")
            found.add((int(i), int(j)))
    return found


def verify_collection(path: str | os.PathLike[str]) -> dict[str, Any]:
    coll = open_collection(path)
    rows = coll.catalog.select(
        ["image_id", "status", "band_names", "nodata", "checksum"]
    ).to_pylist()
    images: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "complete":
            continue
        image_id = row["image_id"]
        meta = store.image_meta(coll.path, image_id)
        if meta is None or meta.get("status") != "complete":
            images[image_id] = {
                "ok": False,
                "problem": "listed complete in the catalog but missing from the store",
            }
            continue
        try:
            if meta.get("byref"):  # pixels at the source: re-warped from there
                from engine.byref import image_checksum as byref_checksum

                got = byref_checksum(coll.path, image_id)
            else:
                got = image_checksum(coll.path, image_id, list(row["band_names"]))
        except Exception as exc:  # unreadable chunk: report, keep checking the others
            images[image_id] = {"ok": False, "problem": f"cannot be read: {exc}"}
            continue
        ok = got == row["checksum"]
        images[image_id] = {
            "ok": ok,
            "checksum": got,
            "problem": "" if ok else f"checksum {got} differs from the catalog's {row['checksum']}",
        }
    bad = sum(not r["ok"] for r in images.values())
    return {"store": coll.path, "checked": len(images), "bad": bad, "images": images}
