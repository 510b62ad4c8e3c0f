"""From inputRasters to source references (engine/sources.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from engine.errors import RequestError
from engine.request import InputRasters
from engine.sources import ItemResolver, SourceRef, resolve_sources


def _raster(path: Path) -> Path:
    """A tiny real GeoTIFF (4x4, EPSG:32633)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(10, 0, 500000, 0, -10, 4000000))  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.arange(16, dtype="uint8").reshape(1, 4, 4))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """imagery/ with rasters at two levels, sidecars, a text file and a collection store."""
    root = tmp_path / "imagery"
    for rel in ("a.tif", "b.TIF", "sub/c.jp2", "sub/deeper/d.tif"):
        _raster(root / rel)
    for rel in ("a.tif.aux.xml", "a.tif.ovr", "a.tif.msk", "a.tfw", "notes.txt", ".hidden.tif"):
        (root / rel).touch()
    (root / "old.zarr").mkdir()
    (root / "old.zarr" / "zarr.json").write_text("{}")
    (root / "old.zarr" / "inner.tif").touch()
    return root


def uris(*values: str, kind: str = "uris", byref: bool = False) -> InputRasters:
    return InputRasters(kind, tuple(values), byref)  # type: ignore[arg-type]


def names(refs: list[SourceRef]) -> list[str]:
    return [r.name for r in refs]


# -- local paths ----------------------------------------------------------------------
def test_plain_file_is_absolute_and_opens(tree, monkeypatch):
    monkeypatch.chdir(tree)
    (ref,) = resolve_sources(uris("a.tif"))
    assert ref == SourceRef(str(tree / "a.tif"), str(tree / "a.tif"), "a")
    assert ref.is_local
    with rasterio.open(ref.gdal_path) as ds:
        assert ds.crs.to_epsg() == 32633


def test_directory_expands_recursively_to_rasters(tree):
    refs = resolve_sources(uris(str(tree)))
    got = [os.path.relpath(r.uri, tree) for r in refs]
    # sidecars, text and hidden files are skipped; the collection store is one source
    assert got == ["a.tif", "b.TIF", "old.zarr", "sub/c.jp2", "sub/deeper/d.tif"]
    assert names(refs) == ["a", "b", "old", "c", "d"]


def test_globs_expand_sorted(tree):
    assert names(resolve_sources(uris(str(tree / "*.tif")))) == ["a"]
    assert names(resolve_sources(uris(str(tree / "**" / "*.tif")))) == ["a", "d"]
    assert names(resolve_sources(uris(str(tree / "?.TIF")))) == ["b"]
    assert names(resolve_sources(uris(str(tree / "[ab].*")))) == ["a", "b"]
    # a glob without an extension is filtered like a directory (no sidecars, no .txt)
    assert names(resolve_sources(uris(str(tree / "*")))) == ["a", "b", "old", "c", "d"]
    # a glob naming an extension takes exactly those files
    assert names(resolve_sources(uris(str(tree / "*.txt")))) == ["notes"]


def test_raster_type_patterns_pick_metadata_files(tmp_path):
    scene = tmp_path / "LC08_X" / "LC08_X_MTL.txt"
    scene.parent.mkdir()
    scene.write_text("GROUP = LANDSAT_METADATA_FILE")
    _raster(scene.parent / "LC08_X_B1.TIF")
    refs = resolve_sources(uris(str(tmp_path)), patterns=["*_MTL.txt"])
    assert [r.uri for r in refs] == [str(scene)]


def test_file_urls(tree):
    path = tree / "a.tif"
    for value in (path.as_uri(), f"file://localhost{path}", str(path)):
        (ref,) = resolve_sources(uris(value))
        assert ref.uri == ref.gdal_path == str(path)
    spaced = _raster(tree / "with space.tif")
    (ref,) = resolve_sources(uris(spaced.as_uri()))
    assert ref.gdal_path == str(spaced) and "%20" in spaced.as_uri()


def test_duplicates_are_dropped_keeping_order(tree):
    refs = resolve_sources(
        uris(
            str(tree / "b.TIF"), str(tree / "a.tif"), (tree / "b.TIF").as_uri(), str(tree / "*.tif")
        )
    )
    assert names(refs) == ["b", "a"]


def test_missing_plain_file_is_left_to_ingestion(tree):
    refs = resolve_sources(uris(str(tree / "a.tif"), str(tree / "gone.tif")))
    assert names(refs) == ["a", "gone"]


@pytest.mark.parametrize(
    "make_values, parameter, words",
    [
        (lambda t: [str(t / "a.tif"), str(t / "*.png")], "inputRasters.uris[1]", "matches no file"),
        (
            lambda t: [str(t / "nothing" / "**" / "*.tif")],
            "inputRasters.uris[0]",
            "matches no file",
        ),
        (lambda t: [str(t / "empty")], "inputRasters.uris[0]", "no raster file"),
        (
            lambda t: [str(t / "x.tif"), str(t / "y.tif")],
            "inputRasters.uris",
            "names no existing file",
        ),
        (lambda t: ["file://server/share/a.tif"], "inputRasters.uris[0]", "remote host 'server'"),
        (lambda t: ["ftp://host/a.tif"], "inputRasters.uris[0]", "unsupported scheme ftp://"),
        (lambda t: ["s3://"], "inputRasters.uris[0]", "names no bucket"),
        (lambda t: ["a.rar!/x.tif"], "inputRasters.uris", "names no existing file"),
    ],
)
def test_local_refusals(tree, make_values, parameter, words):
    (tree / "empty").mkdir()
    values = make_values(tree)
    with pytest.raises(RequestError) as info:
        resolve_sources(uris(*values))
    err = info.value
    assert err.parameter == parameter
    assert words in str(err)
    assert err.fix
    shown = err.value if isinstance(err.value, str) else err.value[0]
    assert shown in values


# -- remote and archives --------------------------------------------------------------
@pytest.mark.parametrize(
    "uri, gdal_path, name",
    [
        ("s3://bucket/dir/scene.tif", "/vsis3/bucket/dir/scene.tif", "scene"),
        ("gs://bucket/x/y.jp2", "/vsigs/bucket/x/y.jp2", "y"),
        ("az://container/blob.tif", "/vsiaz/container/blob.tif", "blob"),
        ("https://host/a/b.tif?sig=1", "/vsicurl/https://host/a/b.tif?sig=1", "b"),
        ("http://host/c.tif", "/vsicurl/http://host/c.tif", "c"),
        ("/vsis3/bucket/k.tif", "/vsis3/bucket/k.tif", "k"),
        ("zip+s3://bucket/a.zip!/m/x.tif", "/vsizip//vsis3/bucket/a.zip/m/x.tif", "x"),
        ("tar+https://h/p.tar.gz!x.tif", "/vsitar//vsicurl/https://h/p.tar.gz/x.tif", "x"),
    ],
)
def test_remote_uris_map_to_gdal_vsi(uri, gdal_path, name):
    (ref,) = resolve_sources(uris(uri))
    assert (ref.gdal_path, ref.name) == (gdal_path, name)
    assert not ref.is_local


def test_urls_kind_needs_a_url(tree):
    (ref,) = resolve_sources(uris("https://h/a.tif", kind="urls"))
    assert ref.gdal_path == "/vsicurl/https://h/a.tif"
    with pytest.raises(RequestError, match="not a URL") as info:
        resolve_sources(uris(str(tree / "a.tif"), kind="urls"))
    assert info.value.parameter == "inputRasters.urls[0]"


def test_local_zip_member_opens_with_rasterio(tmp_path):
    import zipfile

    tif = _raster(tmp_path / "inner.tif")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tif, "dir/inner.tif")
    for value in (f"{archive}!/dir/inner.tif", f"zip://{archive}!dir/inner.tif"):
        (ref,) = resolve_sources(uris(value))
        assert ref.gdal_path == f"/vsizip/{archive}/dir/inner.tif"
        assert ref.uri == f"{archive}!/dir/inner.tif" and ref.name == "inner"
        with rasterio.open(ref.gdal_path) as ds:
            assert ds.read(1)[0, 1] == 1


# -- data stores ----------------------------------------------------------------------
@pytest.fixture
def stores(tree: Path, tmp_path: Path) -> dict[str, Path]:
    outside = _raster(tmp_path / "secret" / "s.tif")
    (tree / "sub" / "escape.tif").symlink_to(outside)
    return {"fileshare": tree}


def test_data_store_relative_paths(tree, stores):
    (ref,) = resolve_sources(uris("/fileshare/a.tif"), data_stores=stores)
    assert ref.uri == ref.gdal_path == str(tree / "a.tif")
    refs = resolve_sources(uris("/fileshare/sub/deeper", "/FileShare/*.TIF"), data_stores=stores)
    assert names(refs) == ["d", "b"]
    # a real path inside a store is accepted too, and "a/../a.tif" stays inside
    assert (
        resolve_sources(uris(str(tree / "sub" / ".." / "a.tif")), data_stores=stores)[0].name == "a"
    )


@pytest.mark.parametrize(
    "value, words",
    [
        ("/fileshare/../secret/s.tif", "outside the registered data stores"),
        ("/etc/hostname", "outside the registered data stores"),
        ("/fileshare/sub/escape.tif", "outside the registered data stores"),
        ("/fileshare/sub", "outside the registered data stores"),  # the symlink inside
        ("relative/a.tif", "names no data store"),
    ],
)
def test_data_store_confinement(stores, value, words):
    with pytest.raises(RequestError) as info:
        resolve_sources(uris("/fileshare/a.tif", value), data_stores=stores)
    assert info.value.parameter == "inputRasters.uris[1]"
    assert words in str(info.value)
    assert "/fileshare" in info.value.fix


def test_without_data_stores_any_local_path_is_allowed(stores, tree):
    refs = resolve_sources(uris(str(tree / "sub" / "escape.tif")))
    assert refs[0].name == "escape"


# -- items and folders ----------------------------------------------------------------
class Portal:
    def __init__(self, tree: Path) -> None:
        self.items = {"i1": [str(tree / "a.tif")], "i2": [str(tree / "b.TIF"), str(tree / "a.tif")]}

    def resolve_item(self, item_id: str) -> list[str]:
        return self.items[item_id]

    def resolve_folder(self, folder_id: str) -> list[str]:
        if folder_id != "f1":
            raise LookupError(folder_id)
        return [str(tree) for tree in (Path(self.items["i1"][0]).parent / "sub",)]


def test_items_and_folders_go_through_the_portal(tree):
    portal = Portal(tree)
    assert isinstance(portal, ItemResolver)
    refs = resolve_sources(uris("i1", "i2", kind="itemIds"), items=portal)
    assert names(refs) == ["a", "b"]
    refs = resolve_sources(uris("f1", kind="folderId"), items=portal)
    assert names(refs) == ["c", "d"]


def test_item_refusals(tree):
    with pytest.raises(RequestError) as info:
        resolve_sources(uris("i1", kind="itemIds"))
    assert "need a portal" in str(info.value) and "mosaicflow serve" in info.value.fix
    assert info.value.parameter == "inputRasters.itemIds"
    with pytest.raises(RequestError) as info:
        resolve_sources(uris("i1", "nope", kind="itemIds"), items=Portal(tree))
    assert info.value.parameter == "inputRasters.itemIds[1]" and "'nope'" in str(info.value)
    with pytest.raises(RequestError, match="not a known portal folder"):
        resolve_sources(uris("f9", kind="folderId"), items=Portal(tree))
