"""The CreateImageCollection geoprocessing service (ArcGIS Server's GPServer paths).

Routes under ``/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection``:
the task description, ``submitJob``, ``jobs/<jobId>``, ``jobs/<jobId>/results/result`` and
``jobs/<jobId>/cancel``. Jobs live in the app's :class:`~engine.jobs.JobStore`
(``<root>/jobs.sqlite``, always local) and run on its :class:`~engine.jobs.JobRunner`; the
collections they create go to the raster store (a local folder or an object-store prefix).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine import storage
from engine.errors import RequestError
from engine.ingest import IngestResult, run_request
from engine.items import ItemRegistry
from engine.jobs import SUCCEEDED, JobRunner, JobStore, item_id
from engine.rastertypes import source_patterns
from engine.request import RASTER_TYPES, CreateRequest, parse_request
from engine.server.arcgis import ArcGISError, respond
from engine.sources import resolve_sources
from engine.store import is_store

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection"
SERVICES = "/arcgis/rest/services"


@dataclass
class ServerState:
    """What the routes share: the local root, the raster store, the token and the runner."""

    root: Path  # the local folder of jobs.sqlite and items.sqlite
    token: str | None
    service_url: str | None
    runner: JobRunner | None = None
    # registered data stores (NAME -> folder); None: any local path (library/tests only)
    data_stores: dict[str, Path] | None = None
    items: ItemRegistry | None = None  # the portal's items: itemIds/folderId inputs
    # where collections are published from and written to (storage.normalize'd): a local
    # folder or s3://bucket/prefix, gs://...; None: the root
    raster_store: str | None = None

    @property
    def store(self) -> str:
        return self.raster_store or storage.normalize(self.root)

    def sources(self, request: CreateRequest) -> list[Any] | None:
        """The request's inputs resolved inside the data stores (RequestError outside) and
        through the portal's items; None lets the engine resolve them (no confinement)."""
        by_item = request.input_rasters.kind in ("itemIds", "folderId")
        if self.data_stores is None and not by_item:
            return None
        return resolve_sources(
            request.input_rasters,
            data_stores=self.data_stores,
            items=self.items,
            patterns=source_patterns(request.raster_type.name),
        )

    def job_runner(self) -> JobRunner:
        if self.runner is None:  # the app was used without its lifespan
            raise ArcGISError(500, "The job service is not running", [])
        return self.runner


def rooted(request: CreateRequest, raster_store: str) -> CreateRequest:
    """``serviceProperties.name`` resolved to ``<raster_store>/<name>.zarr``."""
    target = request.image_collection
    if target.name and not target.uri:
        uri = storage.join(raster_store, f"{target.name}.zarr")
        return replace(request, image_collection=replace(target, uri=uri))
    return request


def adds_to_existing(request: CreateRequest) -> str:
    """An ``imageCollection`` {uri} of an existing collection or {itemId} adds the images
    to it (engine.update); a {serviceProperties: {name}} creates, or resumes its job."""
    target = request.image_collection
    if request.overwrite:
        return "resume"
    if target.item_id and not target.uri:
        return "add"
    return "add" if target.uri and is_store(target.uri) else "resume"


def _check_output(request: CreateRequest, state: ServerState) -> None:
    """With data stores registered, an output uri must lie in the raster store (a local
    path under its folder; a URL in its bucket under its prefix)."""
    uri = request.image_collection.uri
    if state.data_stores is None or not uri:
        return
    if not storage.within(uri, state.store):
        raise RequestError(
            "imageCollection.uri",
            uri,
            "lies outside the server's raster store",
            f'give {{"serviceProperties": {{"name": NAME}}}} to create {state.store}/NAME.zarr',
        )


def make_runner(state: ServerState, client_factory: Any = None) -> JobRunner:
    """The app's runner: the job table at ``<root>/jobs.sqlite``, names resolved in the
    raster store."""
    root, raster_store = state.root, state.store

    def run(request: CreateRequest, **kwargs: Any) -> IngestResult:
        result = run_request(
            rooted(request, raster_store),
            sources=state.sources(request),
            resolver=state.items,
            on_existing=adds_to_existing(request),
            **kwargs,
        )
        if state.items is not None and result.complete and runner_ref:
            # the created collection becomes a portal item, under the id the job announces
            url = f"{runner_ref[0].service_url}/Hosted/{result.name}/ImageServer"
            state.items.add_collection(result.name, result.store, url, item_id(result.store))
        return result

    runner_ref: list[JobRunner] = []

    services = None if state.service_url is None else state.service_url.rstrip("/") + SERVICES
    runner = JobRunner(
        JobStore(root / "jobs.sqlite"),
        client_factory=client_factory,
        run=run,
        service_url=services,
    )
    runner_ref.append(runner)
    return runner


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.mosaicflow
    return state


def _job(runner: JobRunner, job_id: str) -> dict[str, Any]:
    try:
        return runner.status(job_id)
    except KeyError:
        raise ArcGISError(404, "Job not found", [f"No job with id '{job_id}'."]) from None


def _param(name: str, display: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "dataType": "GPString",
        "displayName": display,
        "description": description,
        "direction": "esriGPParameterDirectionInput",
        "defaultValue": "",
        "parameterType": "esriGPParameterType" + ("Required" if required else "Optional"),
        "category": "",
    }


TASK_DESCRIPTION: dict[str, Any] = {
    "name": "CreateImageCollection",
    "displayName": "Create Image Collection",
    "description": (
        "Takes multiple images as input, creates an image collection in the raster store "
        "and publishes it as an image service."
    ),
    "category": "",
    "helpUrl": "",
    "executionType": "esriExecutionTypeAsynchronous",
    "parameters": [
        _param(
            "inputRasters",
            "Input Rasters",
            'JSON: {"uris": [...]}, {"urls": [...]}, {"itemIds": [...]} or {"folderId": ...}',
            required=True,
        ),
        _param(
            "rasterType",
            "Raster Type",
            'JSON: {"rasterTypeName": ..., "rasterTypeParameters": {...}}; types: '
            + ", ".join(RASTER_TYPES),
        ),
        _param(
            "imageCollection",
            "Output Image Collection",
            'JSON: {"serviceProperties": {"name": ...}} or {"uri": ...}',
            required=True,
        ),
        _param("context", "Context", 'JSON: {"outSR": ..., "cellSize": ..., "extent": ...}'),
        {
            "name": "result",
            "dataType": "GPString",
            "displayName": "Result",
            "description": 'JSON: {"itemId": ..., "url": ...} of the output image service',
            "direction": "esriGPParameterDirectionOutput",
            "defaultValue": None,
            "parameterType": "esriGPParameterTypeRequired",
            "category": "",
        },
    ],
}


router = APIRouter()
_METHODS = ["GET", "POST"]


@router.api_route(TASK, methods=_METHODS)
async def task(request: Request) -> Response:
    state = _state(request)
    return await respond(
        request, lambda p: TASK_DESCRIPTION, token=state.token, title="CreateImageCollection"
    )


@router.api_route(TASK + "/submitJob", methods=_METHODS)
async def submit_job(request: Request) -> Response:
    state = _state(request)

    def handle(params: dict[str, str]) -> dict[str, Any]:
        runner = state.job_runner()
        create = parse_request(params)  # RequestError → error JSON, no job created
        state.sources(create)  # inputs outside the data stores are refused here, too
        _check_output(create, state)
        if state.service_url is None:  # the output url follows the address clients use
            runner.service_url = str(request.base_url).rstrip("/") + SERVICES
        job_id = runner.submit(create)
        return {"jobId": job_id, "jobStatus": runner.store.get(job_id)["status"]}

    return await respond(request, handle, token=state.token, title="submitJob")


@router.api_route(TASK + "/jobs/{job_id}", methods=_METHODS)
async def job_status(request: Request, job_id: str) -> Response:
    state = _state(request)
    return await respond(
        request,
        lambda p: _job(state.job_runner(), job_id),
        token=state.token,
        title=f"Job {job_id}",
    )


@router.api_route(TASK + "/jobs/{job_id}/results/result", methods=_METHODS)
async def job_result(request: Request, job_id: str) -> Response:
    state = _state(request)

    def handle(params: dict[str, str]) -> dict[str, Any]:
        runner = state.job_runner()
        status = _job(runner, job_id)["jobStatus"]
        result = runner.result(job_id)
        if status != SUCCEEDED or result is None:
            raise ArcGISError(
                400,
                "Unable to get the job result.",
                [f"Job '{job_id}' has status {status}; results exist once it has succeeded."],
            )
        return result

    return await respond(request, handle, token=state.token, title=f"Job {job_id}: result")


@router.api_route(TASK + "/jobs/{job_id}/cancel", methods=_METHODS)
async def job_cancel(request: Request, job_id: str) -> Response:
    state = _state(request)

    def handle(params: dict[str, str]) -> dict[str, Any]:
        runner = state.job_runner()
        _job(runner, job_id)
        runner.cancel(job_id)
        return _job(runner, job_id)

    return await respond(request, handle, token=state.token, title=f"Job {job_id}: cancel")
