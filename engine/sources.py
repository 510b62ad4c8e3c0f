"""From ``inputRasters`` to the list of sources to ingest.

Each input becomes one or more :class:`SourceRef`: the uri as the user named it (local
paths made absolute), the path GDAL opens (``/vsis3/...``, ``/vsicurl/...``,
``/vsizip/...``) and a display name.

Strategy, per uri:

* cloud and web uris (``s3://``, ``gs://``, ``az://``, ``http(s)://``) map to GDAL's
  virtual file systems without any network access; ``a.zip!/x.tif`` and
  ``zip+s3://...`` reach archive members through ``/vsizip/`` and ``/vsitar/``;
* local uris (plain paths, ``file://`` URLs, data-store-relative paths ``/NAME/...``) are
  resolved to absolute paths; globs expand in sorted order; directories expand
  recursively to the raster files in them (collection stores and product folders such
  as ``.zarr``, ``.gdb``, ``.SAFE`` and ``.crf`` stay one source each);
* with ``data_stores`` (the server) every local path must stay inside a registered
  store, after resolving ``..`` and symlinks; without (CLI, Python) any path is allowed;
* item and folder ids go through an :class:`ItemResolver` (the portal).

A plain path that does not exist is not a request error: that image alone fails at
ingestion. A glob or directory that matches nothing, or a request where *every* input is
missing, is refused before any work.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from engine.errors import RequestError
from engine.request import InputRasters

__all__ = ["RASTER_EXTENSIONS", "ItemResolver", "SourceRef", "resolve_sources"]

# File extensions taken from a directory (lower case): GDAL rasters met in practice.
RASTER_EXTENSIONS = frozenset(
    [
        ".tif",
        ".tiff",
        ".gtif",
        ".jp2",
        ".j2k",
        ".jpx",
        ".img",
        ".vrt",
        ".nc",
        ".nc4",
        ".hdf",
        ".hdf4",
        ".hdf5",
        ".h5",
        ".he5",
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".bmp",
        ".webp",
        ".ntf",
        ".nitf",
        ".dt0",
        ".dt1",
        ".dt2",
        ".ecw",
        ".sid",
        ".mrf",
        ".kea",
        ".bil",
        ".bip",
        ".bsq",
        ".asc",
        ".grd",
        ".ers",
        ".rst",
        ".sdat",
        ".grb",
        ".grib",
        ".grb2",
        ".grib2",
        ".hgt",
    ]
)
# Sidecar files never taken as images, even when a glob names them.
_SIDECARS = (
    ".aux.xml",
    ".ovr",
    ".msk",
    ".tfw",
    ".tifw",
    ".jgw",
    ".pgw",
    ".wld",
    ".prj",
    ".hdr",
    ".rrd",
    ".aux",
    ".xml.aux.xml",
    ".lock",
)
# Directories that are one dataset (a collection store, a product), never expanded.
_CONTAINER_SUFFIXES = (".zarr", ".gdb", ".safe", ".crf", ".sen3")
_ARCHIVES = (
    (".zip", "/vsizip/"),
    (".tar.gz", "/vsitar/"),
    (".tgz", "/vsitar/"),
    (".tar", "/vsitar/"),
)
_REMOTE = {
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "gcs": "/vsigs/",
    "az": "/vsiaz/",
    "azure": "/vsiaz/",
    "oss": "/vsioss/",
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_URI_FIX = (
    "Give a local path, a glob, a directory, file://, s3://, gs://, az://, "
    "http(s):// or a data-store path such as /fileshare/a/a.tif"
)


@dataclass(frozen=True)
class SourceRef:
    """One input to ingest.

    Parameters
    ----------
    uri
        The source as named, normalised: absolute local paths without ``file://``.
    gdal_path
        What ``rasterio.open`` takes: a local path or a ``/vsi...`` path.
    name
        The file-name stem, for display.
    """

    uri: str
    gdal_path: str
    name: str

    @property
    def is_local(self) -> bool:
        """True when ``gdal_path`` is a plain file-system path (existence can be checked)."""
        return not self.gdal_path.startswith("/vsi")


@runtime_checkable
class ItemResolver(Protocol):
    """The portal: what item and folder ids stand for."""

    def resolve_item(self, item_id: str) -> list[str]:
        """The uris of one item's data."""
        ...

    def resolve_folder(self, folder_id: str) -> list[str]:
        """The uris of the data of every item in a folder."""
        ...


def resolve_sources(
    inputs: InputRasters,
    *,
    data_stores: Mapping[str, Path] | None = None,
    items: ItemResolver | None = None,
    patterns: Sequence[str] | None = None,
) -> list[SourceRef]:
    """Expand and resolve ``inputRasters`` into source references.

    Parameters
    ----------
    inputs
        The parsed ``inputRasters``.
    data_stores
        Registered data stores (name → directory). When given (the server), local paths
        must resolve inside one of them; ``/NAME/rest`` is resolved through store NAME.
    items
        The portal resolving ``itemIds`` and ``folderId``; without one those are refused.
    patterns
        File-name globs (``"*_MTL.txt"``) a raster type wants from directories, instead of
        the common raster extensions.

    Returns
    -------
    list of SourceRef
        Deduplicated, in the order given (expansions sorted).

    Raises
    ------
    RequestError
        Unsupported scheme, a path outside the data stores, a glob or directory matching
        nothing, every input missing, or ids without a portal.

    Examples
    --------
    >>> refs = resolve_sources(InputRasters("uris", ("s3://bucket/a/b.tif",)))
    >>> refs[0].gdal_path, refs[0].name
    ('/vsis3/bucket/a/b.tif', 'b')
    """
    stores = _Stores(data_stores) if data_stores is not None else None
    resolver = _Resolver(stores, tuple(patterns) if patterns else None)
    refs: list[SourceRef] = []
    if inputs.kind in ("itemIds", "folderId"):
        if items is None:
            raise RequestError(
                f"inputRasters.{inputs.kind}",
                list(inputs.values),
                "item ids need a portal",
                "Run `mosaicflow serve` or give uris",
            )
        for i, item_id in enumerate(inputs.values):
            param = f"inputRasters.{inputs.kind}[{i}]"
            for uri in _from_portal(items, inputs.kind, item_id, param):
                # Items are registered by the administrator: their paths are trusted.
                refs.extend(resolver.resolve(uri, param, confine=False))
    else:
        for i, uri in enumerate(inputs.values):
            param = f"inputRasters.{inputs.kind}[{i}]"
            if inputs.kind == "urls" and not _SCHEME.match(uri):
                raise RequestError(param, uri, "is not a URL", "Give local paths as uris")
            refs.extend(resolver.resolve(uri, param, confine=True))

    unique = list(dict.fromkeys(refs))
    if unique and not any(_may_exist(r) for r in unique):
        where = "on the server, inside the data stores" if stores else "on this machine"
        raise RequestError(
            f"inputRasters.{inputs.kind}",
            list(inputs.values),
            "names no existing file",
            f"Check the paths: they are read {where}",
        )
    return unique


def _from_portal(items: ItemResolver, kind: str, item_id: str, param: str) -> list[str]:
    try:
        uris = items.resolve_folder(item_id) if kind == "folderId" else items.resolve_item(item_id)
    except RequestError:
        raise
    except (KeyError, LookupError, FileNotFoundError, ValueError) as exc:
        what = "folder" if kind == "folderId" else "item"
        raise RequestError(
            param,
            item_id,
            f"is not a known portal {what} ({exc})",
            f"Check the {what} id in the portal",
        ) from None
    if not uris:
        raise RequestError(param, item_id, "holds no data", "Add data to it or give another id")
    return list(uris)


def _may_exist(ref: SourceRef) -> bool:
    """False only for a local file (or local archive) known to be missing."""
    if ref.is_local:
        return os.path.exists(ref.gdal_path)
    inner = ref.gdal_path.removeprefix("/vsizip/").removeprefix("/vsitar/")
    if inner != ref.gdal_path and not inner.startswith("/vsi"):  # a local archive
        return os.path.exists(ref.uri.split("!", 1)[0])
    return True  # remote: cannot tell without network access


class _Stores:
    """Registered data stores: names → real directories."""

    def __init__(self, stores: Mapping[str, Path]) -> None:
        self.by_name = {str(k): Path(os.path.realpath(os.fspath(v))) for k, v in stores.items()}
        self.folded = {k.casefold(): k for k in self.by_name}

    def lookup(self, path: str) -> Path | None:
        """The real path of a store-relative ``/NAME/rest`` (or ``NAME/rest``), else None."""
        parts = PurePosixPath(path.replace("\\", "/")).parts
        parts = parts[1:] if parts and parts[0] == "/" else parts
        if not parts:
            return None
        name = self.folded.get(parts[0].casefold())
        if name is None:
            return None
        return self.by_name[name].joinpath(*parts[1:])

    def check(self, path: str, param: str, shown: str) -> None:
        """Refuse ``path`` unless its real location is inside a store."""
        real = Path(os.path.realpath(path))
        if not any(real == root or real.is_relative_to(root) for root in self.by_name.values()):
            raise RequestError(
                param,
                shown,
                "is outside the registered data stores",
                f"Give a path inside a data store ({', '.join('/' + n for n in self.by_name)})",
            )


class _Resolver:
    def __init__(self, stores: _Stores | None, patterns: tuple[str, ...] | None) -> None:
        self.stores = stores
        self.patterns = patterns

    def resolve(self, uri: str, param: str, confine: bool) -> list[SourceRef]:
        scheme_match = _SCHEME.match(uri)
        scheme = scheme_match.group(1).lower() if scheme_match else ""
        if uri.startswith("/vsi"):
            return [SourceRef(uri, uri, _stem(uri))]
        if scheme == "file":
            return self._local(_file_url_path(uri, param), uri, param, confine)
        if scheme in ("zip", "tar") or "+" in scheme or _is_member_path(uri):
            return [self._archive(uri, scheme, param, confine)]
        if scheme:
            return [_remote(uri, scheme, param)]
        return self._local(uri, uri, param, confine)

    # -- local paths ------------------------------------------------------------------
    def _local_path(self, path: str, shown: str, param: str, confine: bool) -> str:
        """The absolute path of a local uri; store-relative and confined when stores exist."""
        if self.stores is None:
            return os.path.abspath(os.path.expanduser(path))
        mapped = self.stores.lookup(path)
        if mapped is not None:
            path = str(mapped)
        elif not os.path.isabs(path):
            raise RequestError(
                param,
                shown,
                "is relative and names no data store",
                "Give a data-store path such as /fileshare/a/a.tif",
            )
        path = os.path.normpath(path)
        if confine:
            self.stores.check(path, param, shown)
        return path

    def _local(self, path: str, shown: str, param: str, confine: bool) -> list[SourceRef]:
        full = self._local_path(path, shown, param, confine)
        if os.path.isdir(full):
            if _is_container(full):
                return [SourceRef(full, full, _stem(full))]
            found = self._walk(full, param, confine)
            if not found:
                raise RequestError(
                    param,
                    shown,
                    "is a directory with no raster file",
                    "Give a directory holding images, or a glob such as dir/*.tif",
                )
            return found
        if _GLOB_CHARS.search(path) and not os.path.exists(full):
            return self._glob(full, shown, param, confine)
        return [SourceRef(full, full, _stem(full))]

    def _glob(self, pattern: str, shown: str, param: str, confine: bool) -> list[SourceRef]:
        base = os.path.basename(pattern)
        # "*_MTL.txt" names its files; "*" or "scene_*" is filtered like a directory.
        explicit_ext = bool(re.search(r"\.[A-Za-z0-9]+$", base)) and not _GLOB_CHARS.search(
            base.rsplit(".", 1)[-1]
        )
        # the literal head of the pattern; a match inside a container below it is skipped
        magic = _GLOB_CHARS.search(pattern)
        head = pattern[: magic.start() if magic else len(pattern)].rpartition(os.sep)[0] or os.sep
        out: list[SourceRef] = []
        for match in sorted(glob.glob(pattern, recursive=True)):
            parents = Path(os.path.relpath(match, head)).parts[:-1]
            if any(
                _is_container(os.path.join(head, *parents[: i + 1])) for i in range(len(parents))
            ):
                continue
            if confine and self.stores is not None:
                self.stores.check(match, param, match)
            if os.path.isdir(match):
                if _is_container(match):
                    out.append(SourceRef(match, match, _stem(match)))
                elif not explicit_ext:
                    out.extend(self._walk(match, param, confine))
            elif not _is_sidecar(match) and (explicit_ext or self._wanted(match)):
                out.append(SourceRef(match, match, _stem(match)))
        if not out:
            raise RequestError(
                param, shown, "matches no file", "Check the pattern and the directory"
            )
        return out

    def _walk(self, root: str, param: str, confine: bool) -> list[SourceRef]:
        out: list[SourceRef] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            keep = []
            for d in dirnames:
                if d.startswith("."):
                    continue
                full = os.path.join(dirpath, d)
                if _is_container(full):
                    out.append(self._checked(full, param, confine))
                else:
                    keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                if not f.startswith(".") and not _is_sidecar(f) and self._wanted(f):
                    out.append(self._checked(full, param, confine))
        return sorted(out, key=lambda r: r.uri)

    def _checked(self, path: str, param: str, confine: bool) -> SourceRef:
        if confine and self.stores is not None:
            self.stores.check(path, param, path)  # a symlink may lead out of the store
        return SourceRef(path, path, _stem(path))

    def _wanted(self, path: str) -> bool:
        name = os.path.basename(path)
        if self.patterns is not None:
            return any(fnmatch.fnmatch(name.lower(), p.lower()) for p in self.patterns)
        return os.path.splitext(name)[1].lower() in RASTER_EXTENSIONS

    # -- archives ---------------------------------------------------------------------
    def _archive(self, uri: str, scheme: str, param: str, confine: bool) -> SourceRef:
        """``a.zip!/x.tif``, ``zip://a.zip!x.tif``, ``zip+s3://b/a.zip!x.tif``, ``tar+https://...``."""
        rest = uri
        inner_scheme = ""
        if scheme in ("zip", "tar"):
            rest = uri[len(scheme) + 3 :]
        elif "+" in scheme:
            inner_scheme = scheme.split("+", 1)[1]
            rest = f"{inner_scheme}://{uri[len(scheme) + 3 :]}"
        archive, _, member = rest.partition("!")
        member = member.lstrip("/")
        kind = next((vsi for ext, vsi in _ARCHIVES if archive.lower().endswith(ext)), None)
        if kind is None or not archive:
            raise RequestError(
                param,
                uri,
                "is not a .zip, .tar or .tar.gz member path",
                "Write archive members as path/to/a.zip!/dir/image.tif",
            )
        if inner_scheme or _SCHEME.match(archive):
            inner_scheme = inner_scheme or _SCHEME.match(archive).group(1).lower()  # type: ignore[union-attr]
            archive_gdal = _remote(archive, inner_scheme, param).gdal_path
            archive_uri = archive
        else:
            archive_gdal = archive_uri = self._local_path(archive, uri, param, confine)
        gdal_path = f"{kind}{archive_gdal}" + (f"/{member}" if member else "")
        shown = f"{archive_uri}!/{member}" if member else archive_uri
        return SourceRef(shown, gdal_path, _stem(member or archive))


def _remote(uri: str, scheme: str, param: str) -> SourceRef:
    if scheme in ("http", "https"):
        return SourceRef(uri, f"/vsicurl/{uri}", _stem(urlsplit(uri).path))
    prefix = _REMOTE.get(scheme)
    if prefix is None:
        raise RequestError(param, uri, f"uses the unsupported scheme {scheme}://", _URI_FIX)
    rest = uri.split("://", 1)[1]
    if not rest.strip("/"):
        raise RequestError(param, uri, "names no bucket or object", _URI_FIX)
    return SourceRef(uri, prefix + rest, _stem(rest))


def _file_url_path(uri: str, param: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise RequestError(
            param,
            uri,
            f"names the remote host {parts.netloc!r}",
            "Use file:///absolute/path (or file://localhost/...) for local files",
        )
    path = unquote(parts.path)
    if not path:
        raise RequestError(param, uri, "names no path", "Use file:///absolute/path")
    return path


def _is_member_path(uri: str) -> bool:
    """``a.zip!/x.tif``: the part before ``!`` is an archive."""
    archive, bang, _ = uri.partition("!")
    return bool(bang) and archive.lower().endswith(tuple(ext for ext, _ in _ARCHIVES))


def _is_container(path: str) -> bool:
    low = path.rstrip("/\\").lower()
    if low.endswith(_CONTAINER_SUFFIXES):
        return True
    # a Zarr store (a mosaicflow collection) without the .zarr suffix
    return os.path.isfile(os.path.join(path, "zarr.json")) or os.path.isfile(
        os.path.join(path, ".zgroup")
    )


def _is_sidecar(path: str) -> bool:
    return path.lower().endswith(_SIDECARS)


def _stem(path: str) -> str:
    name = PurePosixPath(path.replace("\\", "/").rstrip("/")).name
    for ext in (".tar.gz", ".zarr", ".gdb", ".safe", ".crf"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return os.path.splitext(name)[0] or name
