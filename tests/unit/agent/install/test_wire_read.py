"""Chunks read from a blob straight into their ArtifactChunk encoding: valid to protobuf and to the agent's parser,
covering the blob from an offset, and refused when the blob shrinks under the stream."""

from __future__ import annotations

import os
import zlib

import pytest

from agent.install.grpc_fetch import parse_chunk
from controller.registry.blobs import BlobStore
from controller.registry.transfer import open_ranges
from controller.registry.transfer_pb import read_encoded, stream_artifact
from shared.errors import InvalidArgument
from shared.pb import agent_pb2


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_encoded_chunks_cover_the_blob_from_an_offset(store: BlobStore):
    data = os.urandom(2_500_000)
    ref = store.put_bytes(data)
    ranges = open_ranges(store, ref.sha256, 1000, chunk_size=1 << 20)
    got = []
    fd = ranges.fileno()
    for pos, n in ranges:
        raw = read_encoded(fd, pos, n, ranges.total)
        msg = agent_pb2.ArtifactChunk.FromString(raw)
        parsed = parse_chunk(raw)
        assert (msg.offset, msg.total_size, msg.crc32) == (pos, len(data), zlib.crc32(data[pos : pos + n]))
        assert (parsed.offset, parsed.total_size, parsed.crc32) == (msg.offset, msg.total_size, msg.crc32)
        assert bytes(parsed.data) == msg.data == data[pos : pos + n]
        got.append(msg.data)
    assert b"".join(got) == data[1000:]


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 70_001])
def test_sizes_around_varint_boundaries(store: BlobStore, size: int):
    data = os.urandom(size)
    ref = store.put_bytes(data)
    with open(store.path(ref.sha256), "rb") as fh:
        raw = read_encoded(fh.fileno(), 0, size, size)
    msg = agent_pb2.ArtifactChunk.FromString(raw)
    assert (msg.data, msg.crc32, msg.total_size) == (data, zlib.crc32(data), size)
    assert bytes(parse_chunk(raw).data) == data


def test_a_blob_that_shrinks_mid_stream_is_refused(tmp_path):
    copy = tmp_path / "shrinking"
    copy.write_bytes(os.urandom(300_000))
    with open(copy, "rb") as fh:
        os.truncate(copy, 200_000)
        with pytest.raises(InvalidArgument, match="shrank while streaming: ended at 200000 of 300000"):
            read_encoded(fh.fileno(), 100_000, 150_000, 300_000)


def test_wire_stream_without_context_yields_messages(store: BlobStore):
    data = os.urandom(1_300_000)
    ref = store.put_bytes(data)
    messages = list(stream_artifact(store, ref.sha256, 5, wire=True, chunk_size=512 << 10))
    chunks = [agent_pb2.ArtifactChunk.FromString(m) for m in messages]
    assert [c.offset for c in chunks] == [5, 5 + (512 << 10), 5 + (1 << 20)]
    assert b"".join(c.data for c in chunks) == data[5:]
