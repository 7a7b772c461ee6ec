"""The agent's zero-copy ArtifactChunk decoder agrees with protobuf."""

from __future__ import annotations

import os

import pytest

from agent.install.grpc_fetch import parse_chunk
from shared.errors import InvalidArgument
from shared.pb import agent_pb2


@pytest.mark.parametrize(
    ("offset", "size", "total", "crc"),
    [(0, 0, 0, 0), (1, 1, 2, 1), (2**40 + 3, 70_000, 2**41, 2**32 - 1), (127, 128, 2**63 - 1, 300)],
)
def test_parse_matches_protobuf(offset, size, total, crc):
    data = os.urandom(size)
    raw = agent_pb2.ArtifactChunk(offset=offset, data=data, total_size=total, crc32=crc).SerializeToString()
    chunk = parse_chunk(raw)
    assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.crc32) == (offset, data, total, crc)


def test_unknown_fields_are_skipped():
    raw = agent_pb2.ArtifactChunk(offset=5, data=b"abc", total_size=9, crc32=7).SerializeToString()
    extra = bytes([(9 << 3) | 2, 2]) + b"zz" + bytes([(10 << 3) | 5]) + b"1234" + bytes([(11 << 3) | 1]) + b"8" * 8
    chunk = parse_chunk(extra + raw)
    assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.crc32) == (5, b"abc", 9, 7)


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_truncated_messages_are_refused(cut):
    raw = agent_pb2.ArtifactChunk(offset=300, data=b"x" * 20, total_size=400, crc32=1).SerializeToString()
    with pytest.raises(InvalidArgument):
        parse_chunk(raw[: len(raw) - cut])


def test_malloc_tuning_applies_on_glibc():
    import platform

    from agent.install.tuning import tune_malloc_for_streaming

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_malloc_for_streaming() is expected
