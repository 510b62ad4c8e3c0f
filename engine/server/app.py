"""The FastAPI app of ``mosaicflow serve``: ArcGIS Server's REST paths over a raster store.

``create_app(root)`` serves the CreateImageCollection GP service (:mod:`engine.server.gp`),
``/arcgis/rest/info`` and the image services of :mod:`engine.server.imageserver`
(every ``<root>/<name>.zarr`` as ``Hosted/<name>``). The job table is ``<root>/jobs.sqlite``; on start-up
interrupted jobs are recovered, on shutdown the runner finishes its running job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        The raster store: ``serviceProperties.name`` collections go to ``<root>/<name>.zarr``;
        the job table is ``<root>/jobs.sqlite``.
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
        outputs inside ``root``. None accepts any local path (for library use and tests;
        ``mosaicflow serve`` always passes its ``--data-store`` set).
    max_request_bytes
        Request bodies over this are refused with ArcGIS error 413 before being read whole.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = gp.ServerState(
        root=root,
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

    imageserver.configure(root)
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
