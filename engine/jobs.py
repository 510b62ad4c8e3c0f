"""CreateImageCollection jobs: an ArcGIS-style job table on disk and a runner that works it.

Strategy: the SQLite table is the single source of truth. Every status change is a
conditional ``UPDATE ... WHERE status IN (...)``, so the runner thread and a cancel call
racing on the same job cannot both win. A cancel of a running job only marks it
``esriJobCancelling``; the run notices on its next progress event (the engine reports every
chunk) and is unwound by a private :class:`BaseException`, which the engine's progress
guard does not swallow. Image status is written last in the store, so a stopped run leaves
no half-written image visible, and a resubmitted job skips the complete ones.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from engine.errors import MosaicflowError, RequestError
from engine.ingest import IngestResult, run_request
from engine.request import CreateRequest, build_request, parse_request

SUBMITTED, WAITING, EXECUTING = "esriJobSubmitted", "esriJobWaiting", "esriJobExecuting"
SUCCEEDED, FAILED = "esriJobSucceeded", "esriJobFailed"
CANCELLING, CANCELLED = "esriJobCancelling", "esriJobCancelled"
INFO, WARNING, ERROR = (f"esriJobMessageType{t}" for t in ("Informative", "Warning", "Error"))
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
DEFAULT_SERVICE_URL = "http://localhost/arcgis/rest/services"
RESUME_MESSAGE = (
    "The server restarted while this job was executing: resuming it"
    " (images already complete are kept and skipped)."
)
RESTART_MESSAGE = (
    "interrupted by server restarts {n} times; resubmit the job"
    " (complete images are kept and skipped)"
)
MAX_RESUMES = 2  # a job that keeps dying with the server (a crash loop) fails instead

_STAGE_MESSAGES = {  # progress events that become Informative messages
    "probed": "Found {images} input images ({failed} could not be read).",
    "planned": "Planned {images} images ({skipped} already complete) in {chunks} chunks.",
}
_ZERO = dict.fromkeys(("images", "failed", "skipped", "chunks"), 0)  # fields events may omit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, request TEXT NOT NULL,
    progress TEXT, result TEXT, summary TEXT, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, description TEXT NOT NULL,
    PRIMARY KEY (job_id, seq));
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


class _Cancelled(BaseException):
    """Raised from the progress callback to stop a run whose job is being cancelled; a
    BaseException because ``engine.ingest`` swallows Exceptions from progress callbacks."""


class JobStore:
    """The job table: one SQLite file in WAL mode, one connection per thread.

    Parameters
    ----------
    path
        The database file, or a directory to hold ``jobs.sqlite``.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path / "jobs.sqlite" if path.is_dir() else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def create(self, request: dict[str, Any], status: str = SUBMITTED) -> str:
        """Insert a job and return its id (32 hex characters, as ArcGIS uses)."""
        job_id, now = uuid4().hex, _now()
        with self._conn() as c:
            c.execute(
                "INSERT INTO jobs (job_id, status, request, created, updated) VALUES (?,?,?,?,?)",
                (job_id, status, _dumps(request), now, now),
            )
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        """The job row with its JSON columns decoded; KeyError when unknown."""
        row = self._conn().execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        out = dict(row)
        for key in ("request", "progress", "result", "summary"):
            out[key] = None if out[key] is None else json.loads(out[key])
        return out

    def set_status(self, job_id: str, status: str, only_from: tuple[str, ...] = ()) -> bool:
        """Change the status (only from ``only_from`` when given); True when it changed."""
        sql, args = "UPDATE jobs SET status=?, updated=? WHERE job_id=?", [status, _now(), job_id]
        if only_from:
            sql += f" AND status IN ({','.join('?' * len(only_from))})"
            args += only_from
        with self._conn() as c:
            return c.execute(sql, args).rowcount == 1

    def update(self, job_id: str, **columns: Any) -> None:
        """Set JSON columns (``progress``, ``result``, ``summary``)."""
        sets = ", ".join(f"{k}=?" for k in columns)
        with self._conn() as c:
            c.execute(
                f"UPDATE jobs SET {sets}, updated=? WHERE job_id=?",
                [*(_dumps(v) for v in columns.values()), _now(), job_id],
            )

    def add_message(self, job_id: str, type_: str, description: str) -> None:
        with self._conn() as c:  # one statement: the next seq is taken atomically
            c.execute(
                "INSERT INTO messages (job_id, seq, type, description) SELECT ?, "
                "COALESCE(MAX(seq), 0) + 1, ?, ? FROM messages WHERE job_id=?",
                (job_id, type_, description, job_id),
            )

    def messages(self, job_id: str) -> list[dict[str, str]]:
        rows = self._conn().execute(
            "SELECT type, description FROM messages WHERE job_id=? ORDER BY seq", (job_id,)
        )
        return [{"type": r["type"], "description": r["description"]} for r in rows]

    def with_status(self, *statuses: str) -> list[str]:
        marks = ",".join("?" * len(statuses))
        rows = self._conn().execute(
            f"SELECT job_id FROM jobs WHERE status IN ({marks}) ORDER BY created", statuses
        )
        return [r["job_id"] for r in rows]

    def close(self) -> None:
        with self._lock:
            while self._all:
                self._all.pop().close()
        self._local = threading.local()


def item_id(store: str) -> str:
    """The deterministic portal item id of a collection: 32 hex characters of its path."""
    return hashlib.md5(store.encode(), usedforsecurity=False).hexdigest()


class JobRunner:
    """Runs the jobs of a :class:`JobStore` on a small thread pool.

    Parameters
    ----------
    store
        The job table.
    client_factory
        Called once per job for the Dask client to run on; None lets the engine decide.
    run
        The engine entry point, ``run(request, client=..., progress=...)``.
    service_url
        Root of the REST services, for the output image service url.
    max_workers
        Jobs that run at the same time; the others wait in submission order.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        client_factory: Callable[[], Any] | None = None,
        run: Callable[..., IngestResult] = run_request,
        service_url: str | None = None,
        max_workers: int = 1,
    ) -> None:
        self.store = store
        self.client_factory = client_factory
        self.run = run
        self.service_url = (service_url or DEFAULT_SERVICE_URL).rstrip("/")
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mf-job")

    def submit(self, request: CreateRequest, *, client: Any = None) -> str:
        """Queue a job and return its id at once (status ``esriJobSubmitted``)."""
        job_id = self.store.create(request.to_json_dict())
        self._pool.submit(self._execute, job_id, request, client)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        """The ArcGIS job JSON; KeyError for an unknown id."""
        job = self.store.get(job_id)
        st = job["status"]
        out = {"jobId": job_id, "jobStatus": st, "messages": self.store.messages(job_id)}
        if job["progress"] is not None and st not in FINISHED:
            out["progress"] = job["progress"]
        done = {"result": {"paramUrl": "results/result"}}
        return out | {"results": done if st == SUCCEEDED else {}, "inputs": job["request"]}

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The ``results/result`` JSON of a succeeded job, else None."""
        return self.store.get(job_id)["result"]

    def cancel(self, job_id: str) -> str:
        """Cancel a job: at once when queued, at the next chunk when executing."""
        status = self.store.get(job_id)["status"]
        if status in (SUBMITTED, WAITING):
            if self.store.set_status(job_id, CANCELLED, (SUBMITTED, WAITING)):
                self.store.add_message(job_id, INFO, "Cancelled before it started.")
        elif status == EXECUTING:
            self.store.set_status(job_id, CANCELLING, (EXECUTING,))
        return self.store.get(job_id)["status"]

    def recover(self) -> None:
        """At start-up: run the queued jobs, resume the ones a restart cut off.

        A create is resumable (complete images are kept, the rest redone), so a job cut
        off while executing is queued again with a Warning; after ``MAX_RESUMES`` restarts
        it fails instead. A job cut off while cancelling is cancelled.
        """
        for job_id in self.store.with_status(CANCELLING):
            if self.store.set_status(job_id, CANCELLED, (CANCELLING,)):
                self.store.add_message(job_id, INFO, "Cancelled.")
        for job_id in self.store.with_status(EXECUTING):
            resumed = sum(m["description"] == RESUME_MESSAGE for m in self.store.messages(job_id))
            if resumed >= MAX_RESUMES:
                if self.store.set_status(job_id, FAILED, (EXECUTING,)):
                    self.store.add_message(job_id, ERROR, RESTART_MESSAGE.format(n=resumed + 1))
            elif self.store.set_status(job_id, SUBMITTED, (EXECUTING,)):
                self.store.add_message(job_id, WARNING, RESUME_MESSAGE)
        for job_id in self.store.with_status(SUBMITTED, WAITING):
            try:
                request = parse_request(self.store.get(job_id)["request"])
            except RequestError as exc:
                self.store.set_status(job_id, FAILED)
                self.store.add_message(job_id, ERROR, str(exc))
                continue
            self._pool.submit(self._execute, job_id, request, None)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    # -- the worker side -----------------------------------------------------------------

    def _execute(self, job_id: str, request: CreateRequest, client: Any) -> None:
        store, t0 = self.store, time.perf_counter()
        if not store.set_status(job_id, EXECUTING, (SUBMITTED, WAITING)):
            return  # cancelled while queued
        start = f"Start Time: {datetime.now(UTC):%a %b %d %H:%M:%S %Y}"
        for text in (start, "Submitted.", "Executing..."):
            store.add_message(job_id, INFO, text)
        try:
            if client is None and self.client_factory is not None:
                client = self.client_factory()
            result = self.run(request, client=client, progress=self._progress(job_id))
            self._finish(job_id, result, time.perf_counter() - t0)
        except _Cancelled:
            store.set_status(job_id, CANCELLED)
            store.add_message(job_id, INFO, "Cancelled.")
        except MosaicflowError as exc:  # RequestError and the other deliberate refusals
            self._fail(job_id, str(exc))
        except Exception as exc:
            self._fail(job_id, f"Internal error: {exc!r}")
        finally:  # whatever escaped (KeyboardInterrupt...), never leave a job executing
            if store.set_status(job_id, FAILED, (EXECUTING,)):
                store.add_message(job_id, ERROR, "Internal error: the run stopped unexpectedly")
            elif store.set_status(job_id, CANCELLED, (CANCELLING,)):
                store.add_message(job_id, INFO, "Cancelled.")

    def _progress(self, job_id: str) -> Callable[[dict[str, Any]], None]:
        """The engine's progress callback: messages, the percent, the cancel check."""
        store = self.store

        def progress(event: dict[str, Any]) -> None:
            if store.get(job_id)["status"] == CANCELLING:
                raise _Cancelled
            stage = event.get("stage")
            if stage in _STAGE_MESSAGES:
                store.add_message(job_id, INFO, _STAGE_MESSAGES[stage].format_map(_ZERO | event))
            elif stage == "chunks":
                done, total = int(event.get("chunks_done", 0)), int(event.get("chunks", 0))
                percent = round(100.0 * done / total, 1) if total else 100.0
                keys = ("chunks_done", "chunks", "images_done", "images", "bytes_done", "bytes")
                info = {k: event[k] for k in keys if k in event}
                message = f"{percent:g}%"
                elapsed, nbytes = float(event.get("elapsed", 0.0)), int(event.get("bytes_done", 0))
                if elapsed > 0 and nbytes:  # the same figures as the CLI's progress line
                    rate = nbytes / elapsed
                    info["mb_per_s"] = round(rate / 1e6, 2)
                    left = int(event.get("bytes", 0)) - nbytes
                    info["eta_s"] = round(left / rate, 1) if left > 0 else 0.0
                    message += f", {info['mb_per_s']:g} MB/s, ETA {info['eta_s']:g} s"
                info |= {"type": "default", "message": message, "percent": percent}
                store.update(job_id, progress=info)
                if total and done == total:
                    store.add_message(job_id, INFO, "Compute stage done.")

        return progress

    def _finish(self, job_id: str, result: IngestResult, elapsed: float) -> None:
        store = self.store
        for rec in result.failed:
            store.add_message(job_id, WARNING, f"Image {rec.name} failed: {rec.message}")
        summary = result.to_dict()
        if result.exit_code not in (0, 3):
            self._fail(job_id, f"No image was ingested into {result.store}.", summary)
            return
        url = f"{self.service_url}/Hosted/{result.name}/ImageServer"
        value = {"itemId": item_id(result.store), "url": url}
        store.add_message(job_id, INFO, f"Output item id is: {value['itemId']}")
        store.add_message(job_id, INFO, f"Output image service url is: {url}")
        gp = {"paramName": "result", "dataType": "GPString", "value": value}
        store.update(job_id, result=gp, summary=summary | value)
        if store.set_status(job_id, SUCCEEDED, (EXECUTING,)):
            store.add_message(
                job_id, INFO, f"Succeeded at {_now()} (Elapsed Time: {elapsed:.2f} seconds)"
            )

    def _fail(self, job_id: str, message: str, summary: dict[str, Any] | None = None) -> None:
        self.store.add_message(job_id, ERROR, message)
        self.store.update(job_id, summary=summary)
        if self.store.set_status(job_id, FAILED, (EXECUTING, CANCELLING)):
            self.store.add_message(job_id, ERROR, f"Failed at {_now()}")


# -- Python users ---------------------------------------------------------------------------

_RUNNERS: dict[Path, JobRunner] = {}
_RUNNERS_LOCK = threading.Lock()


class JobHandle:
    """A submitted job, as Python users see it."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner, self.job_id = runner, job_id

    def status(self) -> str:
        return self.runner.store.get(self.job_id)["status"]

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.runner.store.messages(self.job_id)

    def cancel(self) -> str:
        return self.runner.cancel(self.job_id)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job; return its summary (``IngestResult.to_dict()`` + itemId, url).

        Raises
        ------
        MosaicflowError
            The job failed or was cancelled; the message holds the job's errors.
        TimeoutError
            The job did not finish within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (job := self.runner.store.get(self.job_id))["status"] not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {job['status']} after {timeout}s")
            time.sleep(0.05)
        if job["status"] == SUCCEEDED:
            return job["summary"]
        errors = [m["description"] for m in self.messages if m["type"] == ERROR]
        raise MosaicflowError(f"job {self.job_id} {job['status']}: " + "; ".join(errors))


def submit_job(
    input_rasters: Any,
    raster_type: Any = None,
    image_collection: Any = None,
    context: Any = None,
    *,
    root: str | Path = ".",
    client: Any = None,
) -> JobHandle:
    """Submit a CreateImageCollection job from Python and return at once.

    Parameters
    ----------
    input_rasters, raster_type, image_collection, context
        As for :func:`engine.ingest.create_image_collection`.
    root
        Folder of the job table (``<root>/jobs.sqlite``); one runner per root per process.
    client
        The Dask client to run this job on; None lets the engine decide.

    Examples
    --------
    >>> job = submit_job(["a.tif"], image_collection="out.zarr")  # doctest: +SKIP
    >>> job.result(timeout=600)["exit_code"]  # doctest: +SKIP
    0
    """
    request = build_request(input_rasters, raster_type, image_collection, context)
    key = Path(root).resolve()
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            key.mkdir(parents=True, exist_ok=True)
            _RUNNERS[key] = JobRunner(JobStore(key / "jobs.sqlite"))
        runner = _RUNNERS[key]
    return JobHandle(runner, runner.submit(request, client=client))
