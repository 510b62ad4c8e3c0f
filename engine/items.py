"""The portal's items: what ``inputRasters`` item ids and folder ids stand for.

An :class:`ItemRegistry` is a small SQLite file (``<root>/items.sqlite``) of portal items,
each a raster file (type ``"Image"``) or an image collection (type ``"Image Service"``),
optionally in a folder. It is the :class:`~engine.sources.ItemResolver` the server hands to
:func:`~engine.sources.resolve_sources`: an item id resolves to the item's data uri, a
folder id to the data uris of every item in it.

Item and folder ids are 32 lower-case hex digits (``uuid4().hex``), as ArcGIS portals use.
"""

from __future__ import annotations

import builtins
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from engine import storage
from engine.errors import RequestError

__all__ = ["IMAGE", "IMAGE_SERVICE", "OWNER", "ItemRegistry"]

OWNER = "mosaicflow"
IMAGE = "Image"
IMAGE_SERVICE = "Image Service"
_ADD_FIX = "add it with `mosaicflow items add PATH`"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_COLLECTION_SUFFIXES = (".zarr", ".crf")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    folder_id TEXT PRIMARY KEY,
    title TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    path TEXT,
    folder_id TEXT REFERENCES folders(folder_id),
    owner TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_folder ON items(folder_id);
CREATE INDEX IF NOT EXISTS items_url ON items(url);
"""

_ITEM_COLUMNS = "item_id, title, type, url, path, folder_id, owner, created"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_id() -> str:
    return uuid.uuid4().hex


class ItemRegistry:
    """Portal items and folders kept in a SQLite file.

    Parameters
    ----------
    path
        The database file (created with its tables if missing).

    Items are dicts with ``id``, ``title``, ``type``, ``url`` (the absolute path of a
    local file or the uri/service url), ``path`` (the local data path of a collection,
    else None), ``folder_id`` (None: the owner's root folder), ``owner`` and ``created``
    (epoch milliseconds).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    # -- folders -----------------------------------------------------------------------

    def folders(self) -> list[dict[str, Any]]:
        """Every folder: ``{"id", "title", "created"}``, by title."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM folders ORDER BY title").fetchall()
        return [_folder(r) for r in rows]

    def folder_id(self, title: str) -> str | None:
        """The id of the folder titled ``title`` (None when there is none)."""
        with self._connect() as conn:
            row = conn.execute("SELECT folder_id FROM folders WHERE title = ?", (title,)).fetchone()
        return None if row is None else str(row["folder_id"])

    def folder(self, folder_id: str) -> dict[str, Any]:
        """One folder by id (KeyError if unknown)."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM folders WHERE folder_id = ?", (folder_id,)).fetchone()
        if row is None:
            raise KeyError(folder_id)
        return _folder(row)

    def _ensure_folder(self, conn: sqlite3.Connection, folder: str) -> str:
        """The id of folder ``folder`` (a title, or an existing id); created if needed."""
        row = conn.execute("SELECT folder_id FROM folders WHERE title = ?", (folder,)).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT folder_id FROM folders WHERE folder_id = ?", (folder,)
            ).fetchone()
        if row is not None:
            return str(row["folder_id"])
        folder_id = _new_id()
        conn.execute(
            "INSERT INTO folders (folder_id, title, created) VALUES (?, ?, ?)",
            (folder_id, folder, _now_ms()),
        )
        return folder_id

    # -- items -------------------------------------------------------------------------

    def add(
        self,
        path_or_url: str | os.PathLike[str],
        *,
        title: str | None = None,
        folder: str | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        """Register a raster file, a collection or a uri as a new item.

        Parameters
        ----------
        path_or_url
            A local path (must exist; stored absolute), a ``file://`` URL, or a remote
            uri (``s3://``, ``https://``...) stored as given.
        title
            Defaults to the file name without its extension.
        folder
            A folder title (created if needed) or an existing folder id.
        type
            ``"Image"`` or ``"Image Service"``; by default ``"Image Service"`` for
            collection stores (``.zarr``, ``.crf``) and ImageServer URLs, else ``"Image"``.

        Raises
        ------
        RequestError
            A local path that does not exist, or an empty title or folder.
        """
        raw = os.fspath(path_or_url)
        match = _SCHEME.match(raw)
        local: Path | None = None
        if match is None:
            local = Path(raw).expanduser()
        elif match.group(1).lower() == "file":
            local = Path(unquote(urlsplit(raw).path))
        if local is not None:
            local = local.resolve()
            if not local.exists():
                raise RequestError("path", raw, "does not exist", "Give an existing file")
            url = str(local)
        else:
            url = raw
        name = _basename(url)
        if title is None:
            title = name.rsplit(".", 1)[0] or name or url
        if not title.strip():
            raise RequestError("title", title, "is empty", "Give a title")
        if type is None:
            is_service = url.lower().rstrip("/").endswith(_COLLECTION_SUFFIXES) or (
                "/imageserver" in url.lower()
            )
            type = IMAGE_SERVICE if is_service else IMAGE
        if folder is not None and not folder.strip():
            raise RequestError("folder", folder, "is empty", "Give a folder title")
        item_id = _new_id()
        with self._connect() as conn:
            folder_id = self._ensure_folder(conn, folder) if folder is not None else None
            conn.execute(
                f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, title, type, url, None, folder_id, OWNER, _now_ms()),
            )
        return self.get(item_id)

    def add_collection(
        self,
        name: str,
        store_path: str | os.PathLike[str],
        service_url: str,
        item_id: str | None = None,
    ) -> dict[str, Any]:
        """Register a created collection as an ``"Image Service"`` item (idempotent by url).

        A second call with the same ``service_url`` returns the existing item, its title
        and store path brought up to date.
        """
        path = storage.normalize(store_path)  # a local path made absolute, or a URL
        with self._connect() as conn:
            row = conn.execute(
                "SELECT item_id FROM items WHERE url = ? AND type = ?", (service_url, IMAGE_SERVICE)
            ).fetchone()
            if row is not None:
                item_id = str(row["item_id"])  # the first registration's id stays
                conn.execute(
                    "UPDATE items SET title = ?, path = ? WHERE item_id = ?",
                    (name, path, item_id),
                )
            else:
                item_id = item_id or _new_id()
                conn.execute(
                    f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (item_id, name, IMAGE_SERVICE, service_url, path, None, OWNER, _now_ms()),
                )
        return self.get(item_id)

    def get(self, item_id: str) -> dict[str, Any]:
        """One item by id (KeyError if unknown)."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
        if row is None:
            raise KeyError(item_id)
        return _item(row)

    def list(self, folder_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """The items of one folder (``None``: the root folder), oldest first."""
        with self._connect() as conn:
            if folder_id is None:
                rows = conn.execute(
                    f"SELECT {_ITEM_COLUMNS} FROM items WHERE folder_id IS NULL "
                    "ORDER BY created, rowid"
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_ITEM_COLUMNS} FROM items WHERE folder_id = ? ORDER BY created, rowid",
                    (folder_id,),
                ).fetchall()
        return [_item(r) for r in rows]

    def all(self) -> builtins.list[dict[str, Any]]:
        """Every item, in every folder, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY created, rowid"
            ).fetchall()
        return [_item(r) for r in rows]

    def remove(self, item_id: str) -> None:
        """Forget an item (KeyError if unknown); its data is left alone."""
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM items WHERE item_id = ?", (item_id,))
        if cur.rowcount == 0:
            raise KeyError(item_id)

    # -- ItemResolver ------------------------------------------------------------------

    def resolve_item(self, item_id: str) -> builtins.list[str]:
        """The data uri of one item: a collection's store path, else its url."""
        try:
            item = self.get(item_id)
        except KeyError:
            raise RequestError(
                "inputRasters.itemIds", item_id, "is not a known portal item", _ADD_FIX
            ) from None
        return [item["path"] or item["url"]]

    def resolve_folder(self, folder_id: str) -> builtins.list[str]:
        """The data uris of every item in a folder (given by id or by title)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT folder_id FROM folders WHERE folder_id = ? OR title = ?",
                (folder_id, folder_id),
            ).fetchone()
        if row is None:
            raise RequestError(
                "inputRasters.folderId",
                folder_id,
                "is not a known portal folder",
                f"{_ADD_FIX} --folder TITLE",
            )
        return [i["path"] or i["url"] for i in self.list(str(row["folder_id"]))]


def _basename(url: str) -> str:
    """The last path segment of a path or URL (query and fragment dropped)."""
    if _SCHEME.match(url):
        url = urlsplit(url).path
    return url.rstrip("/").rsplit("/", 1)[-1]


def _item(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["item_id"],
        "title": row["title"],
        "type": row["type"],
        "url": row["url"],
        "path": row["path"],
        "folder_id": row["folder_id"],
        "owner": row["owner"],
        "created": int(row["created"]),
    }


def _folder(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["folder_id"], "title": row["title"], "created": int(row["created"])}
