"""Graph builder of an ingestion: one task per output chunk, nothing else.

Strategy (no I/O happens here):
- each image contributes one *data node*, its :class:`~graphs.chunk.ImageJob` (source parts,
  target grid, store location), stored once in the graph under a tokenized key, so per-chunk
  tasks carry only (job key, i, j): the graph grows linearly with the number of chunks and
  the image metadata is shipped to a worker once, not once per chunk;
- each planned chunk (i, j) of the image is one task ``ingest_chunk(job, i, j)``, which reads
  the source window it needs, warps, clips, writes its Zarr chunk and returns statistics;
- chunks the planner found empty get no task at all (their pixels stay the fill value);
- keys are ``dask.base.tokenize`` of the job, never random, so the same request yields the
  same keys (and the scheduler deduplicates resubmissions).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask.base import tokenize

from graphs.chunk import ImageJob, ingest_chunk

ChunkKey = tuple[str, int, int]


def job_key(job: ImageJob) -> str:
    return f"mosaicflow-image-{tokenize(job)}"


def chunk_key(job: ImageJob, i: int, j: int) -> ChunkKey:
    return (f"mosaicflow-chunk-{tokenize(job)}", i, j)


def build_ingest_graph(
    work: Iterable[tuple[ImageJob, list[tuple[int, int]]]],
) -> tuple[dict[Any, Any], dict[str, list[ChunkKey]]]:
    """The task graph of ``work`` (image jobs with their planned chunks).

    Returns the graph and, per image id, the keys of its chunk tasks (the outputs).

    Examples
    --------
    >>> dsk, keys = build_ingest_graph([(job, [(0, 0), (0, 1)])])  # doctest: +SKIP
    >>> len(dsk)  # one data node + two chunk tasks  # doctest: +SKIP
    3
    """
    dsk: dict[Any, Any] = {}
    outputs: dict[str, list[ChunkKey]] = {}
    for job, chunks in work:
        jk = job_key(job)
        dsk[jk] = job
        keys = outputs.setdefault(job.image_id, [])
        for i, j in chunks:
            key = chunk_key(job, i, j)
            dsk[key] = (ingest_chunk, jk, i, j)
            keys.append(key)
    return dsk, outputs
