"""The controller's pre-encoded chunks are ArtifactChunk messages to protobuf and to the agent's parser."""

from __future__ import annotations

import os

import pytest

from agent.install.grpc_fetch import parse_chunk
from controller.registry.transfer import Chunk
from controller.registry.transfer_pb import chunk_to_pb, encode_chunk, serialize_chunk
from shared.pb import agent_pb2


@pytest.mark.parametrize(
    "chunk",
    [Chunk(0, b"", 0, 0), Chunk(127, b"a", 128, 1), Chunk(2**40 + 5, os.urandom(70_000), 2**50, 2**32 - 1)],
)
def test_encoded_chunk_round_trips(chunk: Chunk):
    expected = (chunk.offset, chunk.data, chunk.total_size, chunk.crc32)
    raw = encode_chunk(chunk)
    msg = agent_pb2.ArtifactChunk.FromString(raw)
    assert (msg.offset, msg.data, msg.total_size, msg.crc32) == expected
    parsed = parse_chunk(raw)
    assert (parsed.offset, bytes(parsed.data), parsed.total_size, parsed.crc32) == expected
    assert serialize_chunk(raw) is raw
    assert agent_pb2.ArtifactChunk.FromString(serialize_chunk(chunk_to_pb(chunk))) == msg
