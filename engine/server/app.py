"""The FastAPI app of ``mosaicflow serve``: ArcGIS Server's REST paths over a raster store.

``create_app(root, raster_store=...)`` serves the CreateImageCollection GP service
(:mod:`engine.server.gp`), ``/arcgis/rest/info`` and the image services of
:mod:`engine.server.imageserver` (every ``<raster_store>/<name>.zarr`` as ``Hosted/<name>``;
the raster store is a local folder or an object-store prefix, by default the root). The job
table is ``<root>/jobs.sqlite`` (always local); on start-up interrupted jobs are recovered,
on shutdown the runner finishes its running job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import storage
from engine.items import ItemRegistry
from engine.server import gp, imageserver, portal
from engine.server.arcgis import (
    ArcGISError,
    check_token,
    output_format,
    read_params,
    render,
    request_token,
    respond,
)
from engine.server.limits import DEFAULT_MAX_BODY, BodyLimit

CURRENT_VERSION = 11.3


def create_app(
    root: str | Path,
    *,
    raster_store: str | Path | None = None,
    service_url: str | None = None,
    token: str | None = None,
    client_factory: Callable[[], Any] | None = None,
    data_stores: dict[str, Path] | None = None,
    max_request_bytes: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    """Build the app.

    Parameters
    ----------
    root
        A local folder: the job table ``<root>/jobs.sqlite`` and the portal's
        ``<root>/items.sqlite``; also the raster store when ``raster_store`` is None.
    raster_store
        Where collections are published from and written to: a local folder or
        ``s3://bucket/prefix`` (``gs://``; connection settings from the AWS_* variables,
        see engine.storage). ``serviceProperties.name`` collections go to
        ``<raster_store>/<name>.zarr``.
    service_url
        The public base url (``https://host``); output image service urls are
        ``<service_url>/arcgis/rest/services/Hosted/<name>/ImageServer``. None uses the
        base url of the submitting request.
    token
        When given, every route but ``/arcgis/rest/info`` requires it (ArcGIS 499/498).
    client_factory
        Called per job for the Dask client; None lets the engine decide.
    data_stores
        Registered data stores (NAME -> folder): input uris must resolve inside them
        (``/NAME/rel/path`` or absolute paths inside; ``..`` and symlinks out refused) and
        outputs inside the raster store. None accepts any local path (for library use and tests;
        ``mosaicflow serve`` always passes its ``--data-store`` set).
    max_request_bytes
        Request bodies over this are refused with ArcGIS error 413 before being read whole.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    store = storage.normalize(root if raster_store is None else raster_store)
    if not storage.is_remote(store):
        Path(store).mkdir(parents=True, exist_ok=True)
    state = gp.ServerState(
        root=root,
        raster_store=store,
        token=token,
        service_url=service_url,
        data_stores=None if data_stores is None else {k: Path(v) for k, v in data_stores.items()},
        items=ItemRegistry(root / "items.sqlite"),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.runner = gp.make_runner(state, client_factory)
        state.runner.recover()
        try:
            yield
        finally:
            runner, state.runner = state.runner, None
            runner.shutdown(wait=True)
            runner.store.close()

    app = FastAPI(title="mosaicflow", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.state.mosaicflow = state
    app.include_router(gp.router)
    app.state.mosaicflow_items = state.items
    app.include_router(portal.router)  # checks the token itself (info routes stay public)

    async def require_token(request: Request) -> None:
        """The image services check the server's token like every other route."""
        check_token(token, request_token(request, await read_params(request)))

    imageserver.configure(store)
    app.include_router(imageserver.router, dependencies=[Depends(require_token)])

    @app.exception_handler(ArcGISError)
    async def arcgis_error(request: Request, exc: ArcGISError) -> Response:
        return render(exc.to_json(), output_format(request, dict(request.query_params)))

    @app.api_route("/arcgis/rest/info", methods=["GET", "POST"])
    async def info(request: Request) -> Response:
        def handle(params: dict[str, str]) -> dict[str, Any]:
            return {
                "currentVersion": CURRENT_VERSION,
                "fullVersion": f"{CURRENT_VERSION}.0",
                "authInfo": {"isTokenBasedSecurity": token is not None},
            }

        return await respond(request, handle, token=token, title="Server info", public=True)

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        error = ArcGISError(
            exc.status_code, "Invalid URL" if exc.status_code == 404 else str(exc.detail)
        )
        return render(error.to_json(), output_format(request, dict(request.query_params)))

    return app
