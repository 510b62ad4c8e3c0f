"""Where a store lives: a local directory, or a prefix in an object store (``s3://``, ``gs://``).

Every module that touches a store's location goes through here, so the rest of the engine
names files by location strings (``<store>/catalog.parquet``) and never asks where they are.

* Local paths keep the fast paths they always had: zarr opens them with its LocalStore
  (given the plain path), small files are written with temp file + fsync + rename.
* Object stores use obstore: one client per bucket and per connection setting, cached in
  each process (a Dask worker rebuilds it from the store URL an ImageJob carries), and
  zarr-python's ``ObjectStore`` over it for arrays. A whole-object PUT is atomic, so a small
  file is written with one PUT; "directories" are key prefixes.
* Connection settings come from the environment variables GDAL already reads for inputs,
  resolved once here for both (:func:`s3_settings`, :func:`gdal_s3_env`):
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION``/``AWS_DEFAULT_REGION``, the endpoint as ``AWS_ENDPOINT_URL`` (a URL) or as
  GDAL's ``AWS_S3_ENDPOINT`` (host:port) with ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING``.
  ``gs://`` uses obstore's GCSStore with its own environment (GOOGLE_APPLICATION_CREDENTIALS).
* Conditional writes (:func:`put_if_absent`, :func:`put_if_match`) are the primitives of
  the writer lock (engine.lock) on an object store.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from engine.errors import StoreError

_SCHEMES = ("s3", "gs")
_TRUE = ("1", "true", "yes", "on")


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an object-store URL (``file://`` and plain paths are local)."""
    s = os.fspath(location)
    return "://" in s and not s.startswith("file://")


def supported(location: str | os.PathLike[str]) -> bool:
    """Whether a store can live at ``location`` (a local path, ``s3://`` or ``gs://``)."""
    s = os.fspath(location)
    return not is_remote(s) or s.partition("://")[0].lower() in _SCHEMES


def normalize(location: str | os.PathLike[str]) -> str:
    """A store location as the engine keeps it: an absolute local path, or the URL;
    never a trailing slash. An unsupported URL scheme is refused here, naming it."""
    s = os.fspath(location)
    if s.startswith("file://"):
        s = s.removeprefix("file://")
    if not is_remote(s):
        return str(Path(s).expanduser().resolve())
    scheme, _, rest = s.partition("://")
    if scheme.lower() not in _SCHEMES or not rest.strip("/"):
        raise StoreError(
            f"{s}: a collection store must be a local path, s3://BUCKET/PREFIX or "
            "gs://BUCKET/PREFIX; give one of those"
        )
    return s.rstrip("/")


def join(location: str | os.PathLike[str], *names: str) -> str:
    """``location/name/...`` (``/`` separated for paths and URLs alike)."""
    return "/".join([os.fspath(location).rstrip("/"), *names])


def same_location(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    if is_remote(a) or is_remote(b):
        return os.fspath(a).rstrip("/") == os.fspath(b).rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


# -- connection settings -----------------------------------------------------------------------


def s3_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """obstore S3 settings from the environment (see the module docstring); only the
    settings given are returned, obstore's defaults (AWS itself) fill the rest."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    host = env.get("AWS_S3_ENDPOINT")
    https = env.get("AWS_HTTPS", "YES").lower() in _TRUE
    if not endpoint and host:
        endpoint = host if "://" in host else f"{'https' if https else 'http'}://{host}"
    if endpoint:
        out["endpoint"] = endpoint.rstrip("/")
        if endpoint.startswith("http://"):
            out["allow_http"] = "true"
    virtual = env.get("AWS_VIRTUAL_HOSTING")
    if virtual is not None:
        out["virtual_hosted_style_request"] = str(virtual.lower() in _TRUE).lower()
    elif endpoint:  # a custom endpoint (MinIO, Ceph, moto) is addressed by path
        out["virtual_hosted_style_request"] = "false"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        out["region"] = region
    for var, key in (
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
    ):
        if env.get(var):
            out[key] = env[var]
    return out


def gdal_s3_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL's /vsis3/ variables for the same endpoint: what to set so that an endpoint
    given only as ``AWS_ENDPOINT_URL`` serves GDAL's input reads too (GDAL reads
    ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING``)."""
    env = os.environ if env is None else env
    settings = s3_settings(env)
    endpoint = settings.get("endpoint")
    if not endpoint or env.get("AWS_S3_ENDPOINT"):
        return {}
    scheme, _, host = endpoint.partition("://")
    return {
        "AWS_S3_ENDPOINT": host,
        "AWS_HTTPS": "NO" if scheme == "http" else "YES",
        "AWS_VIRTUAL_HOSTING": settings["virtual_hosted_style_request"].upper(),
    }


def apply_gdal_s3_env() -> None:
    """Set :func:`gdal_s3_env` in this process (variables already set win)."""
    for key, value in gdal_s3_env().items():
        os.environ.setdefault(key, value)


# -- object store clients (cached per process) --------------------------------------------------


def _split(location: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of an object-store URL."""
    scheme, _, rest = location.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme.lower() not in _SCHEMES or not bucket:
        raise StoreError(
            f"{location}: not an object-store location; give s3://BUCKET/PREFIX or "
            "gs://BUCKET/PREFIX"
        )
    return scheme.lower(), bucket, key.strip("/")


def _settings(scheme: str) -> tuple[tuple[str, str], ...]:
    # re-read on every call: a process whose environment changes (a test server on
    # another port, rotated credentials) gets a new client, not a stale cached one
    return tuple(sorted(s3_settings().items())) if scheme == "s3" else ()


@lru_cache(maxsize=32)
def _client(scheme: str, bucket: str, settings: tuple[tuple[str, str], ...]) -> Any:
    from obstore.store import GCSStore, S3Store

    if scheme == "gs":
        return GCSStore(bucket)
    config = dict(settings)
    options = {"allow_http": config.pop("allow_http", "false") == "true"}
    # "aws_"-prefixed keys: the only form obstore can pickle (Dask tokenizes the store)
    return S3Store(
        bucket,
        config={f"aws_{k}": v for k, v in config.items()},  # type: ignore[arg-type]
        client_options=options,  # type: ignore[arg-type]
    )


@lru_cache(maxsize=32)
def _zarr_object_store(scheme: str, bucket: str, settings: tuple[tuple[str, str], ...]) -> Any:
    from zarr.storage import ObjectStore

    return ObjectStore(_client(scheme, bucket, settings))


def _remote(location: str) -> tuple[Any, str]:
    """The obstore client of ``location``'s bucket and the key."""
    scheme, bucket, key = _split(location)
    return _client(scheme, bucket, _settings(scheme)), key


def zarr_store(location: str | os.PathLike[str]) -> Any:
    """What to give ``zarr.open_group``/``open_array``/``xr.open_zarr`` for ``location``:
    the local path itself (zarr's LocalStore), or a StorePath into the cached ObjectStore."""
    s = os.fspath(location)
    if not is_remote(s):
        return s.removeprefix("file://")
    from zarr.storage import StorePath

    scheme, bucket, key = _split(s)
    return StorePath(_zarr_object_store(scheme, bucket, _settings(scheme)), key)


def open_array(location: str, expect: tuple[Any, ...] = ()) -> Any:
    """A zarr array opened for writing, cached per process by location and connection
    settings (chunk tasks write many chunks of one array; the metadata is read once).

    ``expect``: what the caller knows of the array (shape, dtype, chunks), part of the cache
    key: on a long-lived worker, an array rewritten with another shape at the same location
    (a collection re-created with another cell size) is opened anew, never written through
    its stale metadata.
    """
    s = os.fspath(location)
    scheme = s.partition("://")[0].lower() if is_remote(s) else ""
    return _open_array(s, _settings(scheme) if scheme else (), expect)


@lru_cache(maxsize=256)
def _open_array(
    location: str, settings: tuple[tuple[str, str], ...], expect: tuple[Any, ...]
) -> Any:
    import zarr

    return zarr.open_array(zarr_store(location), mode="r+", zarr_format=3)


# -- small whole files ------------------------------------------------------------------------


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """A whole file; FileNotFoundError when there is none."""
    s = os.fspath(location)
    if not is_remote(s):
        return Path(s.removeprefix("file://")).read_bytes()
    import obstore

    client, key = _remote(s)
    return bytes(obstore.get(client, key).bytes())


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode()


def atomic_write(location: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` and publish what it wrote at ``location`` at once: readers
    see the old file or the new one, never a partial one.

    Local: a temp file beside the target, fsync, rename over it. Object store: the bytes
    are collected in memory and sent in one PUT (an object appears whole or not at all).
    """
    s = os.fspath(location)
    if is_remote(s):
        buf = io.BytesIO()
        write(buf)
        write_bytes(s, buf.getvalue())
        return
    path = Path(s.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file atomically (see :func:`atomic_write`)."""
    s = os.fspath(location)
    if not is_remote(s):
        atomic_write(s, lambda fh: fh.write(data))
        return
    import obstore

    client, key = _remote(s)
    obstore.put(client, key, data)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (not possible on every platform: best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file (object) exists at ``location``."""
    s = os.fspath(location)
    if not is_remote(s):
        return os.path.isfile(s.removeprefix("file://"))
    import obstore

    client, key = _remote(s)
    try:
        obstore.head(client, key)
    except FileNotFoundError:
        return False
    return True


def version(location: str | os.PathLike[str]) -> str | None:
    """A stamp that changes whenever the file (object) at ``location`` is rewritten, or
    None when there is none: the local mtime in nanoseconds (one stat), an object's etag
    and modification time (one HEAD)."""
    s = os.fspath(location)
    if not is_remote(s):
        try:
            st = os.stat(s.removeprefix("file://"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return str(st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
    import obstore

    client, key = _remote(s)
    try:
        meta = obstore.head(client, key)
    except FileNotFoundError:
        return None
    return f"{meta.get('e_tag') or ''}@{meta['last_modified'].isoformat()}"


def within(location: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``location`` lies inside ``root`` (or is it): a local path under the local
    folder once both are resolved (symlinks followed), a URL in the same scheme and bucket
    under the root's prefix. A URL with empty, ``.`` or ``..`` key segments is never inside
    (object stores do not resolve them); a local path is never inside a URL, nor the reverse.
    """
    if is_remote(location) != is_remote(root):
        return False
    try:
        loc, top = normalize(location), normalize(root)
    except StoreError:
        return False
    if not is_remote(top):
        return Path(loc).is_relative_to(top)
    (scheme, bucket, key), (top_scheme, top_bucket, prefix) = _split(loc), _split(top)
    raw_key = loc.partition("://")[2].partition("/")[2]
    if any(part in ("", ".", "..") for part in raw_key.split("/")):
        return False
    if (scheme, bucket) != (top_scheme, top_bucket):
        return False
    return not prefix or key == prefix or key.startswith(prefix + "/")


def is_empty(location: str | os.PathLike[str]) -> bool | None:
    """None when nothing is at ``location``; else whether it is an empty directory
    (a prefix holding objects is never empty; a local file is not a directory: False)."""
    s = os.fspath(location)
    if not is_remote(s):
        path = Path(s.removeprefix("file://"))
        if not path.exists():
            return None
        return path.is_dir() and not any(path.iterdir())
    import obstore

    client, key = _remote(s)
    for batch in obstore.list(client, prefix=f"{key}/" if key else None, chunk_size=1):
        if batch:
            return False
    return None


def children(location: str | os.PathLike[str]) -> list[str]:
    """The names directly under a directory or prefix (files and subdirectories), sorted."""
    s = os.fspath(location)
    if not is_remote(s):
        path = Path(s.removeprefix("file://"))
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    import obstore

    client, key = _remote(s)
    found = obstore.list_with_delimiter(client, prefix=f"{key}/" if key else None)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
    names += [o["path"].rsplit("/", 1)[-1] for o in found["objects"]]
    return sorted(set(names))


def etags(location: str | os.PathLike[str]) -> dict[str, str]:
    """The entity tags of the objects directly under a prefix, by name, unquoted (one
    listing); empty for a local directory. A single PUT's tag is its content's MD5 on S3
    and its emulators, so a writer can skip what is there already."""
    s = os.fspath(location)
    if not is_remote(s):
        return {}
    import obstore

    client, key = _remote(s)
    found = obstore.list_with_delimiter(client, prefix=f"{key}/" if key else None)
    return {
        o["path"].rsplit("/", 1)[-1]: str(o["e_tag"]).strip('"')
        for o in found["objects"]
        if o.get("e_tag")
    }


def list_tree(location: str | os.PathLike[str]) -> list[str]:
    """Every file under a directory or prefix, as ``/``-separated paths relative to it."""
    s = os.fspath(location)
    if not is_remote(s):
        root = Path(s.removeprefix("file://"))
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    client, key = _remote(s)
    return sorted(k[len(key) + 1 :] for batch in _list_keys(client, f"{key}/") for k in batch)


def delete_tree(location: str | os.PathLike[str]) -> None:
    """Delete a directory (prefix) and everything under it; nothing there is no error."""
    s = os.fspath(location)
    if not is_remote(s):
        shutil.rmtree(s.removeprefix("file://"), ignore_errors=True)
        return
    import obstore

    client, key = _remote(s)
    for batch in _list_keys(client, f"{key}/"):
        obstore.delete(client, batch)


def delete_file(location: str | os.PathLike[str]) -> None:
    """Delete one file (object); a missing one is no error."""
    s = os.fspath(location)
    if not is_remote(s):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.removeprefix("file://"))
        return
    import obstore

    client, key = _remote(s)
    with contextlib.suppress(FileNotFoundError):
        obstore.delete(client, key)


def _list_keys(client: Any, prefix: str) -> Iterator[list[str]]:
    import obstore

    for batch in obstore.list(client, prefix=prefix, chunk_size=1000):
        yield [o["path"] for o in batch]


# -- conditional writes (the object-store writer lock) ----------------------------------------


def put_if_absent(location: str, data: bytes) -> str | None:
    """Create the object only if none exists (``If-None-Match: *``); its etag, or None
    when one exists already."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    client, key = _remote(location)
    try:
        return obstore.put(client, key, data, mode="create")["e_tag"]
    except (AlreadyExistsError, PreconditionError):
        return None


def put_if_match(location: str, data: bytes, etag: str) -> str | None:
    """Replace the object only if it is still version ``etag`` (``If-Match``); the new
    etag, or None when it changed or is gone."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    client, key = _remote(location)
    try:
        return obstore.put(client, key, data, mode={"e_tag": etag})["e_tag"]
    except (AlreadyExistsError, PreconditionError, FileNotFoundError):
        return None


def read_versioned(location: str) -> tuple[bytes, str] | None:
    """An object's bytes and etag, or None when there is none."""
    import obstore

    client, key = _remote(location)
    try:
        got = obstore.get(client, key)
    except FileNotFoundError:
        return None
    return bytes(got.bytes()), str(got.meta["e_tag"])
