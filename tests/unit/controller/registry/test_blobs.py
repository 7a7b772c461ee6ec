"""The controller's content-addressed blob store, chunk iterator and download gate."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from controller.registry.blobs import BlobStore
from controller.registry.transfer import DownloadGate, TransferBusy, iter_chunks
from shared.errors import InvalidArgument, NotFound
from shared.manifest import hash_folder


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_file_is_content_addressed_and_idempotent(store: BlobStore, tmp_path: Path):
    data = os.urandom(3 << 20)
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    ref = store.put_file(src)
    sha = hashlib.sha256(data).hexdigest()
    assert (ref.sha256, ref.size) == (sha, len(data))
    assert store.path(sha) == store.root / "sha256" / sha[:2] / sha
    assert store.path(sha).read_bytes() == data
    assert store.put_file(src) == ref
    linked = store.put_file(src, link=True)
    assert linked == ref
    assert not list((store.root / "tmp").iterdir())  # no temp files left


def test_put_folder_matches_hash_folder(store: BlobStore, tmp_path: Path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(1000))
    (folder / "c.txt").write_text("{}")  # same content as a.json: stored once
    entries = store.put_folder(folder)
    assert entries == hash_folder(folder)
    assert len([p for p in (store.root / "sha256").rglob("*") if p.is_file()]) == 2


def test_lookup_errors(store: BlobStore):
    with pytest.raises(NotFound, match="not in the registry"):
        store.path("a" * 64)
    with pytest.raises(InvalidArgument, match="sha256 hex digest"):
        store.path("../../etc/passwd")
    assert not store.exists("b" * 64)


def test_iter_chunks_covers_the_blob_from_an_offset(store: BlobStore):
    data = os.urandom(2_500_000)
    ref = store.put_bytes(data)
    chunks = list(iter_chunks(store, ref.sha256, 1000, chunk_size=1 << 20))
    assert [c.offset for c in chunks] == [1000, 1000 + (1 << 20), 1000 + (2 << 20)]
    assert b"".join(c.data for c in chunks) == data[1000:]
    assert all(c.total_size == len(data) and c.crc32 == zlib.crc32(c.data) for c in chunks)
    assert list(iter_chunks(store, ref.sha256, len(data))) == []  # offset == size: nothing left


def test_iter_chunks_validates_before_streaming(store: BlobStore):
    ref = store.put_bytes(b"x" * 100)
    with pytest.raises(InvalidArgument, match="offset 101 is outside"):
        iter_chunks(store, ref.sha256, 101)
    with pytest.raises(NotFound):
        iter_chunks(store, "c" * 64, 0)
    with pytest.raises(InvalidArgument, match="chunk size"):
        iter_chunks(store, ref.sha256, 0, chunk_size=0)


def test_bandwidth_limit(store: BlobStore):
    ref = store.put_bytes(os.urandom(400_000))
    started = time.monotonic()
    chunks = list(iter_chunks(store, ref.sha256, 0, max_bytes_per_s=1_000_000))
    elapsed = time.monotonic() - started
    assert max(len(c.data) for c in chunks) <= 125_000  # smaller chunks for smooth pacing
    assert 0.25 <= elapsed < 3


def test_gate_limits_waits_and_refuses():
    gate = DownloadGate(slots=2, max_waiting=1, wait_s=0.5, retry_after_s=0.3)
    a, b = gate.acquire(), gate.acquire()
    assert gate.active == 2
    got = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire()))
    waiter.start()
    time.sleep(0.05)
    with pytest.raises(TransferBusy, match=r"retry in 0\.3 s") as info:  # the one waiting place is taken
        gate.acquire()
    assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.retry_after_s == 0.3
    a.release()
    a.release()  # idempotent: frees one slot only
    waiter.join(2)
    assert len(got) == 1 and gate.active == 2
    started = time.monotonic()
    with pytest.raises(TransferBusy):
        gate.acquire()  # waits wait_s, then gives up
    assert time.monotonic() - started >= 0.45
    b.release()
    got[0].release()
    assert gate.active == 0 and gate.refused == 2
