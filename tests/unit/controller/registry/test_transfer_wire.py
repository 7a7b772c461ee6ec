"""The DownloadArtifact wire path: the controller's encoded chunks are exactly the generated ArtifactChunk's
serialization, the agent's decoder agrees with protobuf and refuses malformed messages clearly, and no ``bytes``
object is ever written into."""

from __future__ import annotations

import inspect
import os
import zlib
from pathlib import Path

import pytest

from agent.install import grpc_fetch
from agent.install.grpc_fetch import MalformedChunk, RawChunk, parse_chunk
from controller.registry import transfer_pb
from controller.registry.transfer import Chunk
from controller.registry.transfer_pb import ChunkEncoder, encode_chunk, read_encoded
from shared.errors import InvalidArgument
from shared.pb import agent_pb2

FIELDS = [
    (0, 0, 0, 0),  # every field at its default: the empty message
    (0, 1, 1, 1),
    (127, 128, 2**14, 2**7),  # varint length boundaries
    (2**40 + 5, 70_000, 2**50, 2**32 - 1),
    (2**64 - 1, 3, 2**64 - 1, 2**31),
]


def _pb(offset: int, data: bytes, total: int, crc: int) -> bytes:
    return agent_pb2.ArtifactChunk(offset=offset, data=data, total_size=total, crc32=crc).SerializeToString()


def _fields(chunk: RawChunk | agent_pb2.ArtifactChunk) -> tuple[int, bytes, int, int]:
    return chunk.offset, bytes(chunk.data), chunk.total_size, chunk.crc32


@pytest.mark.parametrize(("offset", "size", "total", "crc"), FIELDS)
def test_encoded_chunk_is_the_generated_serialization(offset: int, size: int, total: int, crc: int) -> None:
    data = os.urandom(size)
    expected = _pb(offset, data, total, crc)
    encoded = encode_chunk(Chunk(offset, data, total, crc))
    assert encoded == expected
    assert _fields(agent_pb2.ArtifactChunk.FromString(encoded)) == (offset, data, total, crc)  # ours -> protobuf
    assert _fields(parse_chunk(expected)) == (offset, data, total, crc)  # protobuf -> ours


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 1 << 20])
@pytest.mark.parametrize("offset", [0, 1, 300])
def test_chunks_read_from_a_file_are_the_generated_serialization(tmp_path: Path, size: int, offset: int) -> None:
    blob = tmp_path / "blob"
    content = os.urandom(offset + size + 7)
    blob.write_bytes(content)
    data = content[offset : offset + size]
    with open(blob, "rb") as fh:
        encoded = ChunkEncoder(size).read(fh.fileno(), offset, size, len(content))
    assert type(encoded) is bytes
    assert encoded == _pb(offset, data, len(content), zlib.crc32(data))
    assert _fields(parse_chunk(encoded)) == (offset, data, len(content), zlib.crc32(data))


def test_one_encoder_serves_chunks_of_any_size(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    content = os.urandom(300_000)
    blob.write_bytes(content)
    encoder = ChunkEncoder(1000)
    with open(blob, "rb") as fh:
        for pos, n in ((0, 10), (10, 250_000), (250_010, 5), (2**7, 2**14)):
            data = content[pos : pos + n]
            assert encoder.read(fh.fileno(), pos, n, len(content)) == _pb(pos, data, len(content), zlib.crc32(data))


def test_no_bytes_object_is_written_into(tmp_path: Path) -> None:
    """Regression: messages used to be built by writing into a ``bytes`` object through ctypes. Each message
    is its own object now, unchanged by every later read of the same encoder, and the agent's view of a
    message is read-only."""
    blob = tmp_path / "blob"
    content = os.urandom(3 << 20)
    blob.write_bytes(content)
    encoder = ChunkEncoder(1 << 20)
    kept: list[tuple[bytes, bytes]] = []
    with open(blob, "rb") as fh:
        for pos in (0, 1 << 20, 2 << 20, 0):
            message = encoder.read(fh.fileno(), pos, 1 << 20, len(content))
            kept.append((message, bytes(bytearray(message))))  # the object and an independent copy
            assert all(obj == copy for obj, copy in kept)  # no earlier message changed
        again = read_encoded(fh.fileno(), 0, 1 << 20, len(content))
    assert kept[0][0] is not kept[3][0] and kept[0][0] == kept[3][0] == again
    assert all(obj == copy for obj, copy in kept)
    parsed = parse_chunk(kept[1][0])
    assert parsed.data.readonly and bytes(parsed.data) == content[1 << 20 : 2 << 20]
    with pytest.raises(TypeError):
        parsed.data[0] = 0  # type: ignore[index]
    mutable = bytearray(kept[2][0])
    from_mutable = parse_chunk(mutable)  # type: ignore[arg-type]
    mutable[-1] ^= 0xFF
    assert bytes(from_mutable.data) == content[2 << 20 :]  # a copy, not a view of the caller's buffer


@pytest.mark.parametrize("module", [transfer_pb, grpc_fetch])
def test_the_wire_path_uses_no_c_api_tricks(module: object) -> None:
    source = inspect.getsource(module)  # type: ignore[arg-type]
    for word in ("ctypes", "pythonapi", "memmove", "from_address"):
        assert word not in source, word


GOOD = _pb(300, b"x" * 20, 400, 1)
MALFORMED = {
    "truncated data": (GOOD[:10], "runs past the end"),
    "truncated crc32": (GOOD[:-1], "ends inside a varint"),
    "truncated varint": (GOOD[:1] + b"\xac", "ends inside a varint"),
    "truncated key": (b"\x80", "ends inside a varint"),
    "varint over 10 bytes": (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    "varint over 64 bits": (b"\x08" + b"\xff" * 9 + b"\x02", "over 64 bits"),
    "field number 0": (b"\x00\x01", "field number 0"),
    "group wire type": (b"\x0b", "wire type 3"),
    "end group wire type": (b"\x5c", "unsupported wire type 4"),
    "reserved wire type": (b"\x56", "unsupported wire type 6"),
    "data as a varint": (b"\x10\x05", "field 2 (data) has wire type 0"),
    "offset as bytes": (b"\x0a\x01x", "field 1 (offset) has wire type 2"),
    "crc32 as fixed32": (b"\x25abcd", "field 4 (crc32) has wire type 5"),
    "truncated fixed64": (b"\x29" + b"1234567", "ends inside a 8-byte field"),
    "truncated fixed32": (b"\x2d" + b"123", "ends inside a 4-byte field"),
    "huge length": (b"\x12\xff\xff\xff\xff\x0f" + b"x", "runs past the end"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_refused_clearly(name: str) -> None:
    raw, words = MALFORMED[name]
    with pytest.raises(InvalidArgument, match="malformed ArtifactChunk") as info:
        parse_chunk(raw)
    assert words in info.value.message


def test_what_protobuf_accepts_is_read_like_protobuf() -> None:
    unknown = bytes([(9 << 3) | 2, 2]) + b"zz" + bytes([(10 << 3) | 5]) + b"1234" + bytes([(11 << 3) | 1]) + b"8" * 8
    repeated = _pb(1, b"old", 2, 3) + _pb(7, b"new", 9, 0)  # concatenated messages merge: the last value wins
    crc_varint = b"\x20" + b"\xff" * 9 + b"\x01"  # a uint32 field read from a 64-bit varint keeps its low 32 bits
    non_minimal = b"\x08\x85\x80\x80\x80\x00"  # a longer varint than needed is still 5
    for raw in (unknown + GOOD, repeated, crc_varint, non_minimal, b""):
        assert _fields(parse_chunk(raw)) == _fields(agent_pb2.ArtifactChunk.FromString(raw)), raw[:20]


class FakeCall:
    def __init__(self, messages: list[bytes]) -> None:
        self._items = iter([grpc_fetch._decode(m) for m in messages])
        self.cancelled = False

    def __next__(self) -> RawChunk | MalformedChunk:
        return next(self._items)

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def code(self) -> str:
        return "the call's"


def test_a_malformed_message_ends_the_download_with_a_resumable_error() -> None:
    call = FakeCall([GOOD, GOOD[:10], GOOD])
    download = grpc_fetch._Download(call)
    assert _fields(next(download)) == (300, b"x" * 20, 400, 1)
    words = r"refused a 10-byte message from the controller: malformed ArtifactChunk: .*runs past the end"
    with pytest.raises(MalformedChunk, match=words):
        next(download)
    assert call.cancelled and download.code() == "the call's"
