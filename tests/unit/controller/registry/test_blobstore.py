"""Every BlobStore backend against the same tests: the filesystem one on tmp_path, the S3 one on the session's
moto server (the real S3 protocol) with a fresh bucket per test."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from controller.registry.blobstore.base import BlobStore, verify_blob
from controller.registry.blobstore.filesystem import FileBlobStore
from controller.registry.transfer import iter_chunks
from shared.errors import IntegrityError, InvalidArgument, NotFound
from shared.manifest import FileEntry, hash_folder

MISSING = "ab" * 32


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    return request.getfixturevalue("s3_store")


def _file(tmp_path: Path, data: bytes, name: str = "w.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_put_stat_and_read_back(blobs: BlobStore, tmp_path: Path):
    data = os.urandom(300_000)
    ref = blobs.put_file(_file(tmp_path, data))
    sha = hashlib.sha256(data).hexdigest()
    assert (ref.sha256, ref.size) == (sha, len(data))
    assert blobs.stat(sha).size == len(data)
    assert blobs.exists(sha)
    assert blobs.read_bytes(sha) == data
    assert blobs.put_file(_file(tmp_path, data, "again.bin")) == ref  # idempotent
    assert list(blobs.iterate()) == [sha]  # no temporary objects are left or listed


def test_put_bytes_and_folder(blobs: BlobStore, tmp_path: Path):
    ref = blobs.put_bytes(b"hello")
    assert ref.sha256 == hashlib.sha256(b"hello").hexdigest()
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(os.urandom(5000))
    (folder / "sub" / "tok.json").write_bytes(b"{}")
    entries = blobs.put_folder(folder, link=True)
    assert [(e.path, e.sha256, e.size) for e in entries] == [(e.path, e.sha256, e.size) for e in hash_folder(folder)]
    assert sorted(blobs.iterate()) == sorted({ref.sha256, *(e.sha256 for e in entries)})
    for entry in entries:
        verify_blob(blobs, entry)


@pytest.mark.parametrize(("offset", "end"), [(0, None), (1, 10), (100, None), (999, 1000), (1000, None), (5, 5000)])
def test_open_range(blobs: BlobStore, offset: int, end: int | None):
    data = os.urandom(1000)
    sha = blobs.put_bytes(data).sha256
    fh, total = blobs.open_range(sha, offset, end)
    with fh:
        got = fh.read()
    assert total == 1000
    assert got == data[offset : min(end or 1000, 1000)]


def test_offset_past_the_end_and_bad_sha(blobs: BlobStore):
    sha = blobs.put_bytes(b"x" * 10).sha256
    with pytest.raises(InvalidArgument, match="outside blob"):
        blobs.open_range(sha, 11)
    with pytest.raises(InvalidArgument, match="not a sha256"):
        blobs.stat("not-a-sha")


def test_not_found_names_the_sha(blobs: BlobStore):
    for call in (blobs.stat, blobs.open_range):
        with pytest.raises(NotFound, match=MISSING):
            call(MISSING)
    assert not blobs.exists(MISSING)
    assert blobs.delete(MISSING) is False


def test_delete_and_iterate(blobs: BlobStore):
    refs = [blobs.put_bytes(bytes([i]) * 100) for i in range(3)]
    assert sorted(blobs.iterate()) == sorted(r.sha256 for r in refs)
    assert blobs.delete(refs[0].sha256) is True
    assert not blobs.exists(refs[0].sha256)
    assert sorted(blobs.iterate()) == sorted(r.sha256 for r in refs[1:])


def test_presign(blobs: BlobStore):
    data = os.urandom(2048)
    sha = blobs.put_bytes(data).sha256
    url = blobs.presign_get(sha, 60)
    if isinstance(blobs, FileBlobStore):
        assert url is None
        assert blobs.local_path(sha) == blobs.blob_path(sha)
        return
    assert url is not None and url.startswith("http")
    assert blobs.local_path(sha) is None
    got = httpx.get(url, timeout=10)
    assert got.status_code == 200
    assert got.content == data


def test_verify_blob_detects_a_wrong_entry(blobs: BlobStore):
    data = b"weights" * 100
    sha = blobs.put_bytes(data).sha256
    with pytest.raises(IntegrityError, match="size"):
        verify_blob(blobs, FileEntry("model.onnx", sha, len(data) + 1))


def test_download_chunks_from_every_backend(blobs: BlobStore):
    """DownloadArtifact's chunk stream: the filesystem's file, or (S3, old agents) a range copied first."""
    data = os.urandom(3 << 20)
    sha = blobs.put_bytes(data).sha256
    chunks = list(iter_chunks(blobs, sha, offset=1000, chunk_size=1 << 20))
    assert b"".join(c.data for c in chunks) == data[1000:]
    assert chunks[0].offset == 1000 and chunks[-1].total_size == len(data)
    with pytest.raises(NotFound):
        iter_chunks(blobs, MISSING)


def test_build_from_settings(tmp_path: Path, s3_server, s3_bucket: str):  # type: ignore[no-untyped-def]
    from controller.core.settings import ControllerSettings
    from controller.registry.blobstore import build_blob_store
    from controller.registry.blobstore.s3 import S3BlobStore
    from shared.errors import ConfigError, Unavailable

    assert isinstance(build_blob_store(ControllerSettings(data_dir=tmp_path)), FileBlobStore)
    s3 = {"data_dir": tmp_path, "blob_store": "s3", "s3_region": "us-east-1"}
    with pytest.raises(ConfigError, match="SLMOPS_S3_BUCKET"):
        build_blob_store(ControllerSettings(**s3))
    built = build_blob_store(ControllerSettings(**s3, s3_bucket=s3_bucket, s3_endpoint_url=s3_server.endpoint_url))
    assert isinstance(built, S3BlobStore) and built.bucket == s3_bucket
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9.*bucket 'nope'"):
        build_blob_store(ControllerSettings(**s3, s3_bucket="nope", s3_endpoint_url=closed))


def test_build_workers_open_the_controllers_store(tmp_path: Path, s3_server, s3_bucket: str):  # type: ignore[no-untyped-def]
    from controller.core.settings import ControllerSettings
    from controller.registry.blobstore import open_for_data_dir, write_config
    from controller.registry.blobstore.s3 import S3BlobStore

    assert isinstance(open_for_data_dir(tmp_path), FileBlobStore)  # nothing recorded: the filesystem
    settings = ControllerSettings(
        data_dir=tmp_path, blob_store="s3", s3_bucket=s3_bucket, s3_endpoint_url=s3_server.endpoint_url
    )
    write_config(settings)
    opened = open_for_data_dir(tmp_path)
    assert isinstance(opened, S3BlobStore) and opened.bucket == s3_bucket
    assert opened.endpoint_url == s3_server.endpoint_url
