"""gRPC DownloadArtifact on the S3 store (agents without the HTTP byte path): the controller streams the ranged GET
of the object chunk by chunk (no copy on its disk), resumes from an offset, and counts every byte it serves in
``slmops_controller_artifact_bytes_total{path="grpc"}``."""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from agent.install.grpc_fetch import grpc_fetch
from agent.install.transfer import download_file, part_path
from controller.registry.blobstore.base import BlobStore
from controller.registry.transfer import DEFAULT_CHUNK, open_ranges
from controller.registry.transfer_pb import stream_artifact
from shared.manifest import FileEntry
from shared.pb import agent_pb2


def served_grpc() -> float:
    return REGISTRY.get_sample_value("slmops_controller_artifact_bytes_total", {"path": "grpc"}) or 0.0


def test_resume_over_grpc_streams_the_object_range_and_counts_it(
    store: BlobStore, channel: grpc.Channel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * DEFAULT_CHUNK + 12345)
    ref = store.put_bytes(data)
    offset = DEFAULT_CHUNK + 7
    part = part_path(tmp_path / "dl", ref.sha256)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:offset])  # a partial download from before a crash
    spooled: list[object] = []
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spooled.append(a) or pytest.fail("spooled"))
    before = served_grpc()

    result = download_file(grpc_fetch(channel), FileEntry("weights", ref.sha256, len(data)), tmp_path / "dl")

    assert result.path.read_bytes() == data and result.resumed_from == offset
    assert served_grpc() - before == len(data) - offset  # exactly the bytes sent, once
    assert spooled == []


def test_ranges_read_the_remote_stream_in_order(store: BlobStore) -> None:
    data = os.urandom(2 * DEFAULT_CHUNK + 99)
    ref = store.put_bytes(data)
    ranges = open_ranges(store, ref.sha256, 10)
    assert not ranges.local  # S3: a stream, not a file
    got = bytearray()
    for pos, n in ranges:
        buf = bytearray(n)
        ranges.fill(memoryview(buf), pos)
        got += buf
    assert bytes(got) == data[10:]


def test_pre_encoded_chunks_from_the_remote_stream(store: BlobStore) -> None:
    """What the controller's DownloadArtifact sends (``wire=True``) from an S3 object, decoded as the agent does."""
    data = os.urandom(DEFAULT_CHUNK + 4321)
    ref = store.put_bytes(data)
    before = served_grpc()
    messages = list(stream_artifact(store, ref.sha256, 5, wire=True))
    chunks = [agent_pb2.ArtifactChunk.FromString(m) for m in messages]  # type: ignore[arg-type]
    assert [c.offset for c in chunks] == [5, 5 + DEFAULT_CHUNK]
    assert b"".join(c.data for c in chunks) == data[5:]
    assert all(c.crc32 == zlib.crc32(c.data) and c.total_size == len(data) for c in chunks)
    assert served_grpc() - before == len(data) - 5
