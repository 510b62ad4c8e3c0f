"""A writer lock per collection store: concurrent adds, removes and resumes take turns.

Strategy: the lock is one small JSON file, ``STORE/.mosaicflow.lock``, created only if it
does not exist (``O_CREAT | O_EXCL`` on a local disk) and holding its owner (host, pid,
the pid's start time, a random token) and a heartbeat time. Whoever creates it holds the
lock; the others poll until it is gone. A holder refreshes the heartbeat while it works, so
a lock is *stale* when its heartbeat is older than ``stale_after`` seconds, or at once when
its owner ran on this host and that process is gone (a SIGKILLed client). A stale lock is
taken over by renaming it to a unique name — only one contender's rename can succeed —
then creating a fresh one.

The primitive is :class:`LockBackend` (create-if-absent, read, refresh, take over,
delete-if-mine). :class:`LocalLock` is the local-disk backend. :class:`ObjectLock` is the
object-store one, built on conditional PUTs (engine.storage): ``If-None-Match: *`` creates
the lock only if absent; ``If-Match: <etag>`` rewrites only the version one read, so a
heartbeat fails once someone took the lock over, and of several contenders taking over one
stale lock only the first succeeds. Object stores have no conditional delete, so a take-over
overwrites the stale lock with a *free* marker (conditionally), which the next create
claims the same way; a release deletes the holder's own lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine import storage
from engine.errors import StoreError

LOCK_NAME = ".mosaicflow.lock"
STALE_AFTER = 120.0  # seconds without a heartbeat before a lock counts as abandoned
HEARTBEAT = 10.0  # seconds between heartbeats of a holder


class LockBackend(Protocol):
    """The four operations a lock needs from the place the store lives."""

    def create(self, content: dict[str, Any]) -> bool:
        """Create the lock holding ``content`` if no lock exists; True when created."""

    def read(self) -> dict[str, Any] | None:
        """The current lock's content (None when there is none or it is unreadable)."""

    def refresh(self, token: str, content: dict[str, Any]) -> bool:
        """Rewrite the lock if it is still ours (``token``); False when it is not."""

    def take_over(self, stale: dict[str, Any]) -> bool:
        """Remove the lock if it is still the ``stale`` one; True when removed."""

    def delete(self, token: str) -> None:
        """Remove the lock if it is ours."""


class LocalLock:
    """:class:`LockBackend` on a local (or POSIX network) file system."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def create(self, content: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(content, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def refresh(self, token: str, content: dict[str, Any]) -> bool:
        current = self.read()
        if current is None or current.get("token") != token:
            return False
        tmp = self.path.with_name(f"{self.path.name}.{token}.tmp")
        tmp.write_text(json.dumps(content))
        os.replace(tmp, self.path)
        return True

    def take_over(self, stale: dict[str, Any]) -> bool:
        aside = self.path.with_name(f"{self.path.name}.{secrets.token_hex(6)}.stale")
        try:
            os.rename(self.path, aside)  # atomic: of several contenders, one wins
        except FileNotFoundError:
            return False
        moved = LocalLock(aside).read()
        if moved is not None and moved.get("token") != stale.get("token"):
            # someone else took over first and this moved their fresh lock: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def delete(self, token: str) -> None:
        current = self.read()
        if current is not None and current.get("token") == token:
            self.path.unlink(missing_ok=True)


_FREE = {"free": True}  # an ObjectLock taken over from a stale holder, claimable


class ObjectLock:
    """:class:`LockBackend` on an object store (``s3://``, ``gs://``), by conditional PUTs."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._etag: str | None = None  # of the lock as this holder last wrote it
        self._seen: dict[str, str] = {}  # holder token -> etag, of locks read

    def _read(self) -> tuple[dict[str, Any] | None, str] | None:
        got = storage.read_versioned(self.location)
        if got is None:
            return None
        try:
            value = json.loads(got[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = None
        return (value if isinstance(value, dict) else None), got[1]

    def create(self, content: dict[str, Any]) -> bool:
        data = json.dumps(content).encode()
        self._etag = storage.put_if_absent(self.location, data)
        if self._etag is None:
            current = self._read()
            if current is not None and current[0] == _FREE:  # released by a take-over
                self._etag = storage.put_if_match(self.location, data, current[1])
        return self._etag is not None

    def read(self) -> dict[str, Any] | None:
        current = self._read()
        if current is None:
            return None
        value, etag = current
        if value is None or value == _FREE:
            return None
        if isinstance(value.get("token"), str):
            self._seen = {value["token"]: etag}
        return value

    def refresh(self, token: str, content: dict[str, Any]) -> bool:
        if self._etag is None:
            return False
        self._etag = storage.put_if_match(self.location, json.dumps(content).encode(), self._etag)
        return self._etag is not None

    def take_over(self, stale: dict[str, Any]) -> bool:
        etag = self._seen.get(str(stale.get("token")))
        if etag is None:
            return False
        return storage.put_if_match(self.location, json.dumps(_FREE).encode(), etag) is not None

    def delete(self, token: str) -> None:
        current = self._read()
        if current is not None and current[0] is not None and current[0].get("token") == token:
            storage.delete_file(self.location)
        self._etag = None


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


def is_stale(content: dict[str, Any], stale_after: float = STALE_AFTER) -> bool:
    """Whether a lock's holder is gone: dead on this host, or silent for ``stale_after`` s."""
    pid = content.get("pid")
    here = content.get("host") == socket.gethostname() and isinstance(pid, int)
    if here and not _alive(pid, content.get("started")):  # type: ignore[arg-type]
        return True
    beat = content.get("heartbeat")
    return not isinstance(beat, int | float) or time.time() - beat > stale_after


@dataclass
class StoreLock:
    """The writer lock of one store; a context manager (see :func:`store_lock`)."""

    backend: LockBackend
    purpose: str = ""
    timeout: float = 3600.0
    stale_after: float = STALE_AFTER
    heartbeat: float = HEARTBEAT
    poll: float = 0.2

    def __post_init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _content(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": pid,
            "started": _start_time(pid),
            "purpose": self.purpose,
            "heartbeat": time.time(),
        }

    def acquire(self) -> None:
        """Wait for the lock (up to ``timeout`` s), taking over a stale one."""
        deadline = time.monotonic() + self.timeout
        while not self.backend.create(self._content()):
            holder = self.backend.read()
            if holder is not None and is_stale(holder, self.stale_after):
                self.backend.take_over(holder)
                continue
            if time.monotonic() > deadline:
                who = holder or {}
                raise StoreError(
                    f"the collection is locked by {who.get('purpose') or 'another writer'} "
                    f"(pid {who.get('pid')} on {who.get('host')}) for more than "
                    f"{self.timeout:.0f} s; wait for it, or delete {LOCK_NAME} in the store "
                    "if that process is gone"
                )
            time.sleep(self.poll)
        self._stop.clear()
        self._beat = threading.Thread(target=self._beating, daemon=True, name="store-lock")
        self._beat.start()

    def _beating(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self.backend.refresh(self.token, self._content()):
                return  # taken over: the writer's commit will find out through the catalog

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.backend.delete(self.token)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def store_lock(store: str | os.PathLike[str], purpose: str = "", **kwargs: Any) -> StoreLock:
    """The writer lock of ``store`` (a local path or an object-store URL), e.g.
    ``with store_lock(path, "add"): ...``.

    Examples
    --------
    >>> with store_lock("out.zarr", "add"):  # doctest: +SKIP
    ...     ...  # read the catalog, add images, publish
    """
    path = str(store).rstrip("/")
    if storage.is_remote(path):
        return StoreLock(ObjectLock(storage.join(path, LOCK_NAME)), purpose, **kwargs)
    path = path.removeprefix("file://")
    return StoreLock(LocalLock(Path(path) / LOCK_NAME), purpose, **kwargs)
