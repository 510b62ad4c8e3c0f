"""mosaicflow on Coiled (https://coiled.io): workers in your own cloud account.

    pip install coiled && coiled login
    python -m cluster.coiled_example s3://bucket/out.zarr s3://bucket/scenes/*.tif

The workers run the mosaicflow image (cluster/Dockerfile, pushed to a registry your cloud
account can pull from; ``--image``). Inputs and store are object-store uris, read and
written by the workers in the bucket's region: choose the cluster's ``--region`` to be
the bucket's. Coiled forwards the local AWS credentials to the workers by default; the
engine registers its GDAL cloud-read settings on every worker when it connects.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_IMAGE = "mosaicflow-worker:0.1.0"


def cluster_options(
    *, workers: int = 8, image: str = DEFAULT_IMAGE, region: str = "us-west-2"
) -> dict[str, Any]:
    """Keyword arguments of ``coiled.Cluster`` for a mosaicflow cluster.

    Parameters
    ----------
    workers:
        Worker VMs.
    image:
        The container image (cluster/Dockerfile) pushed where the cloud account pulls.
    region:
        The cloud region; the one of the input and output buckets.
    """
    return {
        "name": "mosaicflow",
        "n_workers": workers,
        "container": image,
        "region": region,
        # compute-optimised 4-core VMs: one worker process with 4 threads each
        "worker_vm_types": ["c6i.xlarge"],
        "scheduler_vm_types": ["m6i.large"],
        "worker_options": {"nthreads": 4},
        "idle_timeout": "30 minutes",
    }


def main(argv: list[str] | None = None) -> int:
    """Ingest on a Coiled cluster: the same request as ``mosaicflow create``."""
    import coiled

    from engine import create_image_collection
    from engine.cli import ProgressPrinter, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--image", default=DEFAULT_IMAGE)
    p.add_argument("--region", default="us-west-2")
    p.add_argument("--out-sr", default=None)
    p.add_argument("--cell-size", default=None)
    args = p.parse_args(argv)
    context = {k: v for k, v in {"outSR": args.out_sr, "cellSize": args.cell_size}.items() if v}
    options = cluster_options(workers=args.workers, image=args.image, region=args.region)
    with coiled.Cluster(**options) as cluster, cluster.get_client() as client:
        print(f"mosaicflow: Dask dashboard: {cluster.dashboard_link}", file=sys.stderr)
        result = create_image_collection(
            args.inputs,
            image_collection=args.store,
            context=context,
            client=client,
            progress=ProgressPrinter(),
        )
    return report(result, as_json=False)


if __name__ == "__main__":
    sys.exit(main())
