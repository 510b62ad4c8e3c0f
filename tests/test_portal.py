"""The portal: the item registry and its ``/portal/sharing/rest`` routes over real HTTP."""

from __future__ import annotations

import time
import types
from pathlib import Path

import pytest
from affine import Affine
from fastapi import FastAPI

from engine.errors import RequestError
from engine.items import ItemRegistry
from engine.request import InputRasters
from engine.server import portal
from engine.sources import ItemResolver, resolve_sources
from tests.conftest import write_raster
from tests.loopback import serve

PORTAL = "/portal/sharing/rest"


def _raster(d: Path, name: str, seed: int = 0) -> Path:
    return write_raster(
        d / name,
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000 + 1000 * seed, 0, -30, 4_650_000),
        shape=(20, 24),
        nodata=0,
        seed=seed,
    )


@pytest.fixture
def registry(tmp_path: Path) -> ItemRegistry:
    return ItemRegistry(tmp_path / "root" / "items.sqlite")


@pytest.fixture
def rasters(tmp_path: Path) -> list[Path]:
    d = tmp_path / "data"
    d.mkdir()
    return [_raster(d, f"scene_{i}.tif", i) for i in range(3)]


# -- ItemRegistry ----------------------------------------------------------------------


def test_add_file_item(registry: ItemRegistry, rasters: list[Path]) -> None:
    item = registry.add(rasters[0])
    assert len(item["id"]) == 32 and int(item["id"], 16) >= 0
    assert item["title"] == "scene_0"
    assert item["type"] == "Image"
    assert item["url"] == str(rasters[0].resolve())
    assert item["folder_id"] is None
    assert item["owner"] == "mosaicflow"
    assert abs(item["created"] - time.time() * 1000) < 60_000
    assert registry.get(item["id"]) == item
    assert registry.list() == [item]
    assert isinstance(registry, ItemResolver)


def test_add_remote_and_typed(registry: ItemRegistry) -> None:
    s3 = registry.add("s3://bucket/a/b.tif", title="B")
    assert (s3["url"], s3["title"], s3["type"]) == ("s3://bucket/a/b.tif", "B", "Image")
    svc = registry.add("https://h/arcgis/rest/services/x/ImageServer")
    assert svc["type"] == "Image Service"
    explicit = registry.add("https://h/other", type="Image Service", title="o")
    assert explicit["type"] == "Image Service"


def test_add_missing_path_refused(registry: ItemRegistry, tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="does not exist"):
        registry.add(tmp_path / "nope.tif")
    assert registry.list() == []


def test_folders(registry: ItemRegistry, rasters: list[Path]) -> None:
    a = registry.add(rasters[0], folder="flights")
    b = registry.add(rasters[1], folder="flights")
    c = registry.add(rasters[2], folder="other")
    root = registry.add(rasters[2], title="root one")
    fid = registry.folder_id("flights")
    assert fid is not None and len(fid) == 32
    assert a["folder_id"] == b["folder_id"] == fid
    assert c["folder_id"] == registry.folder_id("other") != fid
    assert registry.folder_id("absent") is None
    assert [f["title"] for f in registry.folders()] == ["flights", "other"]
    assert [i["id"] for i in registry.list(fid)] == [a["id"], b["id"]]
    assert [i["id"] for i in registry.list()] == [root["id"]]
    # a folder may also be named by its id
    d = registry.add(rasters[0], folder=fid)
    assert d["folder_id"] == fid and len(registry.folders()) == 2


def test_get_unknown(registry: ItemRegistry) -> None:
    with pytest.raises(KeyError):
        registry.get("0" * 32)


def test_resolve_item_and_folder(registry: ItemRegistry, rasters: list[Path]) -> None:
    a = registry.add(rasters[0], folder="f")
    registry.add(rasters[1], folder="f")
    assert registry.resolve_item(a["id"]) == [str(rasters[0].resolve())]
    fid = registry.folder_id("f")
    assert fid is not None
    expected = [str(rasters[0].resolve()), str(rasters[1].resolve())]
    assert registry.resolve_folder(fid) == expected
    assert registry.resolve_folder("f") == expected  # by title too


def test_resolve_errors(registry: ItemRegistry) -> None:
    with pytest.raises(RequestError) as exc:
        registry.resolve_item("deadbeef" * 4)
    assert exc.value.parameter == "inputRasters.itemIds"
    assert exc.value.value == "deadbeef" * 4
    assert "mosaicflow items add PATH" in exc.value.fix
    assert "deadbeef" in str(exc.value)
    with pytest.raises(RequestError) as exc:
        registry.resolve_folder("nofolder")
    assert exc.value.parameter == "inputRasters.folderId"
    assert exc.value.value == "nofolder"
    assert "mosaicflow items add PATH" in exc.value.fix


def test_add_collection_idempotent(registry: ItemRegistry, tmp_path: Path) -> None:
    store = tmp_path / "root" / "uav.zarr"
    url = "http://127.0.0.1:8000/arcgis/rest/services/uav/ImageServer"
    first = registry.add_collection("uav", store, url)
    assert first["type"] == "Image Service" and first["url"] == url
    assert first["title"] == "uav" and first["path"] == str(store.resolve())
    again = registry.add_collection("uav", store, url)
    assert again["id"] == first["id"]
    assert len(registry.list()) == 1
    assert registry.resolve_item(first["id"]) == [str(store.resolve())]
    other = registry.add_collection("uav2", tmp_path / "root" / "uav2.zarr", url + "2")
    assert other["id"] != first["id"] and len(registry.list()) == 2


def test_registry_persists(tmp_path: Path, rasters: list[Path]) -> None:
    path = tmp_path / "items.sqlite"
    item = ItemRegistry(path).add(rasters[0], folder="f")
    reopened = ItemRegistry(path)
    assert reopened.get(item["id"]) == item
    assert reopened.folder_id("f") == item["folder_id"]


def test_resolve_sources_through_registry(registry: ItemRegistry, rasters: list[Path]) -> None:
    item = registry.add(rasters[0])
    refs = resolve_sources(InputRasters(kind="itemIds", values=(item["id"],)), items=registry)
    assert [r.uri for r in refs] == [str(rasters[0].resolve())]
    assert refs[0].gdal_path == str(rasters[0].resolve()) and refs[0].name == "scene_0"

    registry.add(rasters[1], folder="f")
    registry.add(rasters[2], folder="f")
    fid = registry.folder_id("f")
    assert fid is not None
    refs = resolve_sources(InputRasters(kind="folderId", values=(fid,)), items=registry)
    assert [r.name for r in refs] == ["scene_1", "scene_2"]

    with pytest.raises(RequestError) as exc:
        resolve_sources(InputRasters(kind="itemIds", values=("f" * 32,)), items=registry)
    assert exc.value.parameter == "inputRasters.itemIds"

    registry.add(rasters[0], folder="empty-later")
    empty = registry.folder_id("empty-later")
    assert empty is not None
    registry.remove(registry.list(empty)[0]["id"])
    with pytest.raises(RequestError, match="holds no data"):
        resolve_sources(InputRasters(kind="folderId", values=(empty,)), items=registry)


# -- routes over real HTTP ---------------------------------------------------------------


def _app(registry: ItemRegistry | None, token: str | None = None) -> FastAPI:
    app = FastAPI()
    if registry is not None:
        app.state.mosaicflow_items = registry
    app.state.mosaicflow = types.SimpleNamespace(token=token)
    app.include_router(portal.router)
    return app


def test_portal_routes(registry: ItemRegistry, rasters: list[Path]) -> None:
    a = registry.add(rasters[0], title="Alpha scene")
    b = registry.add(rasters[1], title="Beta scene", folder="flights")
    coll = registry.add_collection("uav", rasters[0].parent / "uav.zarr", "http://x/ImageServer")
    fid = registry.folder_id("flights")
    with serve(_app(registry)) as http:
        assert http.get(PORTAL, params={"f": "json"}).json() == {"currentVersion": "11.3"}

        info = http.get(f"{PORTAL}/info", params={"f": "json"}).json()
        assert info["owningSystemUrl"] == f"{http.base_url}".rstrip("/") + "/portal"
        assert info["authInfo"] == {"isTokenBasedSecurity": False}

        me = http.get(f"{PORTAL}/portals/self", params={"f": "pjson"})
        assert me.text.startswith("{\n")
        body = me.json()
        assert body["name"] == "mosaicflow" and body["isPortal"] is True
        assert body["currentVersion"] == "11.3" and body["helperServices"] == {}
        assert body["user"] is None and body["id"]

        item = http.get(f"{PORTAL}/content/items/{b['id']}", params={"f": "json"}).json()
        assert item["id"] == b["id"] and item["title"] == "Beta scene"
        assert item["type"] == "Image" and item["url"] == b["url"]
        assert item["owner"] == "mosaicflow" and item["ownerFolder"] == fid
        assert item["created"] == b["created"] and "Raster" in item["typeKeywords"]
        svc = http.get(f"{PORTAL}/content/items/{coll['id']}", params={"f": "json"}).json()
        assert svc["type"] == "Image Service" and "Dynamic Imagery" in svc["typeKeywords"]

        root = http.get(f"{PORTAL}/content/users/mosaicflow", params={"f": "json"}).json()
        assert root["username"] == "mosaicflow" and root["currentFolder"] is None
        assert [i["id"] for i in root["items"]] == [a["id"], coll["id"]]
        assert root["total"] == 2 and root["start"] == 1 and root["nextStart"] == -1
        assert [(f["id"], f["title"]) for f in root["folders"]] == [(fid, "flights")]

        folder = http.get(f"{PORTAL}/content/users/mosaicflow/{fid}", params={"f": "json"}).json()
        assert folder["currentFolder"]["id"] == fid
        assert folder["currentFolder"]["title"] == "flights"
        assert [i["id"] for i in folder["items"]] == [b["id"]]

        by_id = http.get(f"{PORTAL}/search", params={"q": f"id:{a['id']}", "f": "json"}).json()
        assert by_id["total"] == 1 and [r["id"] for r in by_id["results"]] == [a["id"]]
        by_title = http.get(f"{PORTAL}/search", params={"q": "scene", "f": "json"}).json()
        assert {r["id"] for r in by_title["results"]} == {a["id"], b["id"]}
        paged = http.get(f"{PORTAL}/search", params={"q": "", "num": 2, "f": "json"}).json()
        assert (paged["total"], paged["num"], paged["nextStart"]) == (3, 2, 3)
        assert len(paged["results"]) == 2
        tail = http.get(f"{PORTAL}/search", params={"start": 3, "num": 2, "f": "json"}).json()
        assert (tail["num"], tail["nextStart"]) == (1, -1)
        posted = http.post(f"{PORTAL}/search", data={"q": "alpha", "f": "json"}).json()
        assert [r["id"] for r in posted["results"]] == [a["id"]]

        missing = http.get(f"{PORTAL}/content/items/{'0' * 32}", params={"f": "json"})
        assert missing.status_code == 200
        assert missing.json()["error"]["code"] == 400
        assert "does not exist" in missing.json()["error"]["message"]
        nouser = http.get(f"{PORTAL}/content/users/someone", params={"f": "json"}).json()
        assert nouser["error"]["code"] == 400
        nofolder = http.get(f"{PORTAL}/content/users/mosaicflow/nope", params={"f": "json"})
        assert nofolder.json()["error"]["code"] == 400
        bad = http.get(f"{PORTAL}/search", params={"num": "x", "f": "json"}).json()
        assert bad["error"]["code"] == 400

        page = http.get(f"{PORTAL}/portals/self", headers={"accept": "text/html"})
        assert page.headers["content-type"].startswith("text/html")


def test_portal_token_and_unconfigured(registry: ItemRegistry, rasters: list[Path]) -> None:
    item = registry.add(rasters[0])
    with serve(_app(registry, token="s3cret")) as http:
        # public: clients read these before signing in
        info = http.get(f"{PORTAL}/info", params={"f": "json"}).json()
        assert info["authInfo"]["isTokenBasedSecurity"] is True
        assert http.get(f"{PORTAL}/portals/self", params={"f": "json"}).json()["isPortal"]
        url = f"{PORTAL}/content/items/{item['id']}"
        assert http.get(url, params={"f": "json"}).json()["error"]["code"] == 499
        assert http.get(url, params={"f": "json", "token": "bad"}).json()["error"]["code"] == 498
        ok = http.get(url, params={"f": "json", "token": "s3cret"}).json()
        assert ok["id"] == item["id"]
        bearer = http.get(
            url, params={"f": "json"}, headers={"X-Esri-Authorization": "Bearer s3cret"}
        )
        assert bearer.json()["id"] == item["id"]
    with serve(_app(None)) as http:
        err = http.get(f"{PORTAL}/search", params={"f": "json"}).json()["error"]
        assert err["code"] == 500 and err["message"] == "portal not configured"
        assert http.get(PORTAL, params={"f": "json"}).json() == {"currentVersion": "11.3"}
