"""Graph builder of an ingestion: one task per output chunk, nothing else.

Strategy (no I/O happens here):
- each image contributes one *data node*, its :class:`~graphs.chunk.ImageJob` (source parts,
  target grid, store location), stored once in the graph under a tokenized key, so per-chunk
  tasks carry only (job key, i, j): the graph grows linearly with the number of chunks and
  the image metadata is shipped to a worker once, not once per chunk;
- each image has one template task (graphs/templates.py: its group's metadata, no pixels),
  written on a worker; every chunk task of the image depends on it;
- each planned chunk (i, j) of the image is one task ``ingest_chunk(job, i, j)``, which reads
  the source window it needs, warps, clips, writes its Zarr chunk and returns statistics:
  a source window is read, warped and dropped inside one task, so a worker never holds
  more source pixels than its running tasks warp (no read tasks run ahead of the warps,
  the root-task overproduction that exhausts the memory of odc-stac clusters);
- chunks the planner found empty get no task at all (their pixels stay the fill value);
- keys are ``dask.base.tokenize`` of the job, never random, so the same request yields the
  same keys (and the scheduler deduplicates resubmissions);
- overview levels (graphs/overviews.py) add one task per chunk of each level, after the
  tasks of its (at most four) children: level 1 after level-0 chunk tasks, level k after
  level k-1. Each image's pyramid ends in one top task, the only one the client asks for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask.base import tokenize

from graphs.chunk import ImageJob, ingest_chunk
from graphs.overviews import PyramidJob, level1_chunk, level_chunk, level_chunks
from graphs.templates import ImageTemplate, write_template

ChunkKey = tuple[str, int, int]


def job_key(job: ImageJob) -> str:
    return f"mosaicflow-image-{tokenize(job)}"


def chunk_key(job: ImageJob, i: int, j: int) -> ChunkKey:
    return (f"mosaicflow-chunk-{tokenize(job)}", i, j)


def template_key(job: ImageJob) -> str:
    return f"mosaicflow-template-{tokenize(job)}"


def build_ingest_graph(
    work: Iterable[tuple[ImageJob, list[tuple[int, int]], ImageTemplate | None]],
) -> tuple[dict[Any, Any], dict[str, list[ChunkKey]]]:
    """The task graph of ``work``: image jobs with their planned chunks and their template
    (None: the image's group is written already).

    Returns the graph and, per image id, the keys of its chunk tasks (the outputs).

    Examples
    --------
    >>> dsk, keys = build_ingest_graph([(job, [(0, 0), (0, 1)], template)])  # doctest: +SKIP
    >>> len(dsk)  # job and template data nodes, the template task, two chunk tasks  # doctest: +SKIP
    5
    """
    dsk: dict[Any, Any] = {}
    outputs: dict[str, list[ChunkKey]] = {}
    for job, chunks, template in work:
        jk = job_key(job)
        dsk[jk] = job
        after: tuple[Any, ...] = ()
        if template is not None and chunks:
            tk = template_key(job)
            dsk[f"{tk}-attrs"] = template
            dsk[tk] = (write_template, jk, f"{tk}-attrs")
            after = (tk,)
        keys = outputs.setdefault(job.image_id, [])
        for i, j in chunks:
            key = chunk_key(job, i, j)
            dsk[key] = (ingest_chunk, jk, i, j, *after)
            keys.append(key)
    return dsk, outputs


def add_overview_tasks(
    dsk: dict[Any, Any], pyramid: PyramidJob, job: ImageJob, chunks: list[tuple[int, int]]
) -> tuple[Any, ...] | None:
    """Add ``pyramid``'s level tasks to ``dsk`` (``job``'s chunk tasks must be in it);
    returns the key of its top task, or None when the image has no overview level."""
    if pyramid.levels == 0 or not chunks:
        return None
    pk = f"mosaicflow-pyramid-{tokenize(pyramid)}"
    dsk[pk] = pyramid
    name = f"mosaicflow-overview-{tokenize(pyramid)}"
    per_level = level_chunks(chunks, pyramid.levels)
    for i, j in sorted(per_level[1]):
        kids = [
            chunk_key(job, ci, cj)
            for ci in (2 * i, 2 * i + 1)
            for cj in (2 * j, 2 * j + 1)
            if (ci, cj) in per_level[0]
        ]
        dsk[(name, 1, i, j)] = (level1_chunk, pk, i, j, *kids)
    for level in range(2, pyramid.levels + 1):
        for i, j in sorted(per_level[level]):
            below = [
                (di, dj)
                for di in (0, 1)
                for dj in (0, 1)
                if (2 * i + di, 2 * j + dj) in per_level[level - 1]
            ]
            deps: list[Any] = [(name, level - 1, 2 * i + di, 2 * j + dj) for di, dj in below]
            dsk[(name, level, i, j)] = (level_chunk, pk, level, i, j, below, deps)
    return (name, pyramid.levels, 0, 0)
