"""The ``mosaicflow`` command line: parses arguments and calls the same functions as Python.

Errors are translated here, and only here, into exit codes (SPEC §2): 0 every image
ingested, 3 some images failed (each listed), 1 nothing usable, 2 a bad request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from engine.errors import MosaicflowError, RequestError, StoreError

EXIT_OK, EXIT_NOTHING, EXIT_REQUEST, EXIT_PARTIAL = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RequestError as exc:
        print(f"mosaicflow: bad request: {exc}", file=sys.stderr)
        return EXIT_REQUEST
    except StoreError as exc:
        print(f"mosaicflow: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except MosaicflowError as exc:
        print(f"mosaicflow: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except KeyboardInterrupt:
        print("mosaicflow: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosaicflow", description="Create and inspect image collections."
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="create (or resume) an image collection")
    c.add_argument("store", nargs="?", help="output collection path (STORE.zarr)")
    c.add_argument(
        "inputs", nargs="*", help="input rasters: files, globs, directories, file:// or cloud uris"
    )
    c.add_argument(
        "--request", help="a JSON file with the seed's parameters (inputRasters, rasterType, ...)"
    )
    c.add_argument("--raster-type", default=None, help="rasterTypeName (default: Raster Dataset)")
    c.add_argument("--raster-type-params", default=None, help="rasterTypeParameters as JSON")
    c.add_argument(
        "--out-sr", default=None, help="output spatial reference: 3857, EPSG:32633, WKT, ..."
    )
    c.add_argument("--cell-size", default=None, help="cell size in outSR units, or MinOf / MaxOf")
    c.add_argument(
        "--resampling", default=None, help="NEAREST, BILINEAR, CUBIC, ... (default NEAREST)"
    )
    c.add_argument("--extent", default=None, help="clip box xmin,ymin,xmax,ymax[,SR]")
    c.add_argument(
        "--clip", default=None, help="clip polygon: GeoJSON/Esri JSON text or a file holding it"
    )
    c.add_argument("--nodata", default=None, type=float, help="output noData value")
    c.add_argument(
        "--byref",
        action="store_true",
        help="keep pixels at the source: the store holds metadata only (engine.byref)",
    )
    c.add_argument("--name", default=None, help="collection name (default: the store's file name)")
    _cluster_args(c)
    c.add_argument(
        "--processes",
        action="store_true",
        help="local cluster of single-threaded worker processes instead of threads "
        "(threads measured faster on one machine; see cluster/README.md)",
    )
    c.add_argument(
        "--tile-size", type=int, default=512, help="collection tile (chunk) size in pixels"
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    c.add_argument("--json", action="store_true", help="print the result object as JSON on stdout")
    c.set_defaults(func=cmd_create)

    i = sub.add_parser("info", help="describe a collection")
    i.add_argument("store")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("verify", help="re-read every chunk and check each image's checksum")
    v.add_argument("store")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("add", help="add images to an existing collection (its frame is kept)")
    a.add_argument("store", help="the collection (STORE.zarr)")
    a.add_argument("inputs", nargs="+", help="input rasters, or collections whose images to add")
    a.add_argument("--byref", action="store_true", help="keep pixels at the source")
    a.add_argument("--raster-type", default=None, help="rasterTypeName (default: Raster Dataset)")
    a.add_argument("--raster-type-params", default=None, help="rasterTypeParameters as JSON")
    a.add_argument("--resampling", default=None, help="default: the collection's method")
    a.add_argument("--out-sr", default=None, help="must be the collection's CRS if given")
    a.add_argument("--cell-size", default=None, help="must be the collection's cell size if given")
    _cluster_args(a)
    a.add_argument("--json", action="store_true", help="print the result object as JSON on stdout")
    a.set_defaults(func=cmd_add)

    r = sub.add_parser("remove", help="remove images from a collection")
    r.add_argument("store", help="the collection (STORE.zarr)")
    r.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
    r.set_defaults(func=cmd_remove)

    s = sub.add_parser("serve", help="serve jobs and image services over the ArcGIS REST API")
    s.add_argument(
        "--root",
        required=True,
        help="a local folder for the job and item tables; also the raster store by default",
    )
    s.add_argument(
        "--raster-store",
        default=None,
        metavar="DIR_OR_URL",
        help="where collections are published from and written to (<name>.zarr): a folder "
        "or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX (AWS_* variables); default: --root",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument(
        "--data-store",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a folder input uris may come from (/NAME/rel/path); repeatable; none: no local inputs",
    )
    s.add_argument("--token-file", help="require this token on every route (ArcGIS 498/499)")
    s.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    s.add_argument("--tls-key", help="the certificate's private key (PEM)")
    s.add_argument("--service-url", help="public base url used in output service urls")
    s.add_argument(
        "--max-request-mb",
        type=float,
        default=16.0,
        help="refuse request bodies larger than this (ArcGIS error 413); default 16",
    )
    s.set_defaults(func=cmd_serve)

    it = sub.add_parser("items", help="the portal's items (what itemIds and folderId inputs name)")
    it_sub = it.add_subparsers(dest="items_command", required=True)
    add = it_sub.add_parser("add", help="register a raster (or collection) as a portal item")
    add.add_argument("path")
    add.add_argument("--root", required=True, help="the server's --root (holds items.sqlite)")
    add.add_argument("--folder", default=None, help="a folder title (created if needed)")
    add.add_argument("--title", default=None)
    add.set_defaults(func=cmd_items_add)

    d = sub.add_parser("demo", help="generate a small realistic input set and ingest it")
    d.add_argument("dir", nargs="?", default="demo-output")
    d.add_argument("--scenes", type=int, default=4)
    d.add_argument("--size", type=int, default=1024)
    _cluster_args(d)
    d.set_defaults(func=cmd_demo)
    return p


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address (else DASK_SCHEDULER_ADDRESS, else local)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local cluster size: threads (worker processes with `create --processes`); "
        "default: parallelProcessingFactor, else every core",
    )


# -- create ------------------------------------------------------------------------------


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The seed-shaped request the flags describe (the same parser then validates it)."""
    if args.request:
        try:
            req = json.loads(Path(args.request).read_text())
        except OSError as exc:
            raise RequestError(
                "--request",
                args.request,
                f"cannot be read ({exc.strerror})",
                "give a readable JSON file",
            ) from None
        except json.JSONDecodeError as exc:
            raise RequestError(
                "--request", args.request, f"is not valid JSON ({exc})", "fix the JSON"
            ) from None
        if not isinstance(req, dict):
            raise RequestError(
                "--request", args.request, "must hold a JSON object", 'e.g. {"inputRasters": {...}}'
            )
        if args.store and "imageCollection" not in req:
            req["imageCollection"] = {"uri": args.store}
        if args.overwrite:
            req["overwrite"] = True
        return req
    if not args.store:
        raise RequestError(
            "STORE", None, "no output collection given", "mosaicflow create OUT.zarr INPUT..."
        )
    if not args.inputs:
        raise RequestError(
            "INPUT", [], "no input rasters given", "name files, globs or directories after STORE"
        )
    inputs: dict[str, Any] = {"uris": list(args.inputs)}
    if args.byref:
        inputs["byref"] = True
    rtype: dict[str, Any] = {"rasterTypeName": args.raster_type or "Raster Dataset"}
    if args.raster_type_params:
        rtype["rasterTypeParameters"] = args.raster_type_params
    context: dict[str, Any] = {}
    if args.out_sr:
        context["outSR"] = args.out_sr
    if args.cell_size:
        context["cellSize"] = args.cell_size
    if args.resampling:
        context["resamplingMethod"] = args.resampling
    if args.extent:
        context["extent"] = args.extent
    if args.clip:
        clip = Path(args.clip)
        context["clippingGeometry"] = clip.read_text() if clip.is_file() else args.clip
    if args.nodata is not None:
        context["noData"] = args.nodata
    collection: dict[str, Any] = {"uri": args.store}
    if args.name:
        collection["serviceProperties"] = {"name": args.name}
    return {
        "inputRasters": inputs,
        "rasterType": rtype,
        "imageCollection": collection,
        "context": context,
        "overwrite": args.overwrite,
    }


def cmd_create(args: argparse.Namespace) -> int:
    from engine.ingest import run_request
    from engine.request import parse_request

    request = parse_request(request_from_args(args))
    for w in request.warnings:
        print(f"mosaicflow: warning: {w}", file=sys.stderr)
    result = run_request(
        request,
        scheduler=args.scheduler,
        workers=args.workers,
        processes=args.processes,
        tile_size=args.tile_size,
        progress=ProgressPrinter(),
        on_existing=_on_existing(args, request),
    )
    return report(result, as_json=args.json)


def _on_existing(args: argparse.Namespace, request: Any) -> str:
    """A request file whose imageCollection is an existing collection adds to it (the
    seed's CreateImageCollection); the flags form creates, or resumes the same request."""
    from engine import store

    target = request.image_collection
    if args.request and target.uri and not request.overwrite and store.is_store(target.uri):
        return "add"
    return "resume"


def cmd_add(args: argparse.Namespace) -> int:
    from engine.update import add_images

    rtype: dict[str, Any] = {"rasterTypeName": args.raster_type or "Raster Dataset"}
    if args.raster_type_params:
        rtype["rasterTypeParameters"] = args.raster_type_params
    context = {
        k: v
        for k, v in (
            ("outSR", args.out_sr),
            ("cellSize", args.cell_size),
            ("resamplingMethod", args.resampling),
        )
        if v
    }
    result = add_images(
        args.store,
        args.inputs,
        byref=args.byref,
        raster_type=rtype,
        context=context,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=ProgressPrinter(),
    )
    return report(result, as_json=args.json)


def cmd_remove(args: argparse.Namespace) -> int:
    from engine.update import remove_images

    removed = remove_images(args.store, args.image_ids)
    print(f"mosaicflow: removed {len(removed)} images from {args.store}", file=sys.stderr)
    return EXIT_OK


def report(result: Any, *, as_json: bool) -> int:
    for r in result.failed:
        print(f"mosaicflow: image failed: {', '.join(r.source_uris)}: {r.message}", file=sys.stderr)
    done = len(result.complete)
    print(
        f"mosaicflow: {done} of {len(result.records)} images ingested into {result.store} "
        f"in {result.elapsed:.1f} s",
        file=sys.stderr,
    )
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    return int(result.exit_code)


class ProgressPrinter:
    """Progress on stderr: images and chunks done, MB/s, ETA, and the dashboard link.

    MB/s counts decoded output pixels written (10^6 bytes; the engine's ``bytes_done``
    events), over the last ``window`` seconds, so the ETA follows the current pace rather
    than the average since the start (worker start-up, a lost worker).
    """

    def __init__(self, stream: Any = None, every: float = 1.0, window: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self.window = window
        self._last = 0.0
        self._samples: deque[tuple[float, float]] = deque()  # (elapsed s, amount done)

    def __call__(self, event: dict[str, Any]) -> None:
        stage = event.get("stage")
        if stage == "probed":
            self._say(f"found {event['images']} readable images ({event['failed']} unreadable)")
        elif stage == "planned":
            self._say(
                f"planned {event['images']} images, {event['chunks']} chunks to compute"
                + (f", {event['skipped']} images already complete" if event.get("skipped") else "")
            )
        elif stage == "compute" and event.get("dashboard"):
            self._say(f"Dask dashboard: {event['dashboard']}")
        elif stage == "chunks":
            self._chunks(event)

    def _chunks(self, event: dict[str, Any]) -> None:
        # the pace is measured in bytes when the engine reports them, else in chunks
        done, total = (
            (event["bytes_done"], event["bytes"])
            if event.get("bytes")
            else (event["chunks_done"], event["chunks"])
        )
        elapsed = float(event["elapsed"])
        self._samples.append((elapsed, float(done)))
        while len(self._samples) > 2 and elapsed - self._samples[1][0] >= self.window:
            self._samples.popleft()
        now = time.monotonic()
        if event["chunks_done"] != event["chunks"] and now - self._last < self.every:
            return
        self._last = now
        t_old, done_old = self._samples[0] if len(self._samples) > 1 else (0.0, 0.0)
        rate = (done - done_old) / max(elapsed - t_old, 1e-9)
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
        pace = f"{rate / 1e6:.1f} MB/s" if event.get("bytes") else f"{rate:.1f} chunks/s"
        self._say(
            f"images {event['images_done']}/{event['images']}  chunks {event['chunks_done']}/"
            f"{event['chunks']}  {pace}  ETA {eta}"
        )

    def _say(self, text: str) -> None:
        print(f"mosaicflow: {text}", file=self.stream, flush=True)


# -- info / verify / demo ----------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from engine.collection import open_collection

    coll = open_collection(args.store)
    table = coll.catalog
    status = table["status"].to_pylist()
    d = coll.descriptor
    info = {
        "store": coll.path,
        "name": coll.info.name,
        "crs": d.get("spatialReference"),
        "cell_size": coll.info.cell_size,
        "tile_size": coll.info.tile_size,
        "images": len(status),
        "complete": status.count("complete"),
        "failed": status.count("failed"),
        "extent": d.get("extent"),
        "bandCount": d.get("bandCount"),
        "pixelType": d.get("pixelType"),
        "image_ids": coll.image_ids,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k != "image_ids":
                print(f"{k:>10}: {v}")
        for row in table.select(["image_id", "status", "width", "height", "message"]).to_pylist():
            print(
                f"  {row['image_id']}  {row['status']:<8} {row['width']}x{row['height']}  {row['message'] or ''}"
            )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.verify import verify_collection

    report_ = verify_collection(args.store)
    if args.json:
        print(json.dumps(report_, indent=2))
    for image_id, r in report_["images"].items():
        if not r["ok"]:
            print(f"mosaicflow: {image_id}: {r['problem']}", file=sys.stderr)
    print(
        f"mosaicflow: verified {report_['checked']} images: {report_['bad']} bad", file=sys.stderr
    )
    return EXIT_OK if report_["bad"] == 0 else EXIT_NOTHING


def parse_data_stores(values: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` flags as a mapping; each PATH must be an existing folder."""
    stores: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        folder = Path(path).expanduser()
        if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RequestError(
                "--data-store", value, "is not NAME=PATH", "e.g. --data-store imagery=/data/imagery"
            )
        if not folder.is_dir():
            raise RequestError(
                "--data-store", value, f"{folder} is not a folder", "give an existing folder"
            )
        stores[name] = folder.resolve()
    return stores


def cmd_serve(args: argparse.Namespace) -> int:
    from engine import storage

    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise RequestError(
                "--token-file",
                args.token_file,
                f"cannot be read ({exc.strerror})",
                "give a readable file",
            ) from None
        if not token:
            raise RequestError(
                "--token-file", args.token_file, "is empty", "write the token into the file"
            )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise RequestError(
            "--tls-cert/--tls-key", args.tls_cert or args.tls_key, "need each other", "give both"
        )
    raster_store = args.raster_store
    if raster_store is not None:
        try:
            raster_store = storage.normalize(raster_store)
        except StoreError:
            raise RequestError(
                "--raster-store",
                raster_store,
                "is not a folder or an object-store prefix",
                "give a folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX",
            ) from None
    import uvicorn

    from engine.server import create_app

    app = create_app(
        args.root,
        raster_store=raster_store,
        service_url=args.service_url,
        token=token,
        data_stores=parse_data_stores(args.data_store),
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
    )
    uvicorn.run(
        app, host=args.host, port=args.port, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key
    )
    return EXIT_OK


def cmd_items_add(args: argparse.Namespace) -> int:
    from engine.items import ItemRegistry

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    item = ItemRegistry(root / "items.sqlite").add(args.path, title=args.title, folder=args.folder)
    print(json.dumps(item, indent=2))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    result = run_demo(
        Path(args.dir),
        scenes=args.scenes,
        size=args.size,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=ProgressPrinter(),
    )
    return report(result, as_json=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
