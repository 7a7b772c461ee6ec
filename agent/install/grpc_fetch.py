"""gRPC boundary of the agent's downloader: ``fetch(sha, offset, max_bps) -> iterator of chunks``.

:func:`grpc_fetch` calls ``AgentService.DownloadArtifact`` with a response deserializer that reads the
ArtifactChunk wire format directly and hands out the payload as a read-only memoryview of gRPC's ``bytes`` (no
protobuf object, no extra copy of each megabyte; nothing is written into it). Every message is validated: a
malformed one ends the stream with :class:`MalformedChunk` (resumable, like a corrupted chunk).
:func:`stub_fetch` does the same through the generated stub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc

from shared.errors import InvalidArgument, TransferError
from shared.pb import agent_pb2

DOWNLOAD_METHOD = "/slmops.v1.AgentService/DownloadArtifact"
# Options for a channel that downloads (harmless to the unary RPCs on the same channel):
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Room for chunks up to 8 MiB (the server sends 1 MiB by default).
    ("grpc.max_receive_message_length", 8 << 20),
    # Server-streaming calls are read on the calling thread instead of through the channel's spin thread:
    # one thread hand-off less per chunk (~15% more throughput on loopback).
    ("SingleThreadedUnaryStream", 1),  # grpc.experimental.ChannelOptions.SingleThreadedUnaryStream
    # Let the server send HTTP/2 DATA frames of up to 16 MiB instead of 16 KiB: far fewer frames per chunk.
    ("grpc.http2.max_frame_size", (16 << 20) - 1),
]

Metadata = Sequence[tuple[str, str]]


class RawChunk(NamedTuple):
    offset: int
    data: memoryview
    total_size: int
    crc32: int


class MalformedChunk(TransferError):
    """The controller sent a message that is not a valid ArtifactChunk: nothing of it was written, and the
    download resumes from the last good chunk."""


# ArtifactChunk: field number -> (name, wire type). Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
_FIELDS = {1: ("offset", 0), 2: ("data", 2), 3: ("total_size", 0), 4: ("crc32", 0)}
_FIXED_SIZE = {1: 8, 5: 4}
_MAX_FIELD = (1 << 29) - 1
_U64 = (1 << 64) - 1


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; at most 10 bytes and 64 bits, as protobuf allows."""
    end = min(len(buf), pos + 10)
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result > _U64:
                raise InvalidArgument(f"varint over 64 bits ending at byte {pos}")
            return result, pos
        shift += 7
    if end < len(buf):
        raise InvalidArgument(f"varint longer than 10 bytes at byte {pos - 10}")
    raise InvalidArgument(f"message ends inside a varint (at byte {pos} of {len(buf)})")


def _field(buf: memoryview, pos: int) -> tuple[int, int, int]:
    """The next field's key at ``pos``: ``(field number, wire type, position after the key)``; a known field
    must have its declared wire type."""
    key, after = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if not 0 < number <= _MAX_FIELD:
        raise InvalidArgument(f"invalid field number {number} at byte {pos}")
    known = _FIELDS.get(number)
    if known is not None and wire != known[1]:
        raise InvalidArgument(f"field {number} ({known[0]}) has wire type {wire}, expected {known[1]}")
    return number, wire, after


def _skip(buf: memoryview, pos: int, wire: int) -> int:
    """The position after the payload of an unknown field of fixed size (wire types 1 and 5)."""
    size = _FIXED_SIZE.get(wire)
    if size is None:
        raise InvalidArgument(f"unsupported wire type {wire} at byte {pos}")
    if size > len(buf) - pos:
        raise InvalidArgument(f"message ends inside a {size}-byte field (at byte {pos} of {len(buf)})")
    return pos + size


def parse_chunk(raw: bytes) -> RawChunk:
    """Decode an ArtifactChunk (fields 1 offset, 2 data, 3 total_size, 4 crc32) as protobuf does: any field
    order, the last value of a repeated field wins, unknown fields are skipped, a varint crc32 keeps its low 32
    bits. ``data`` is a read-only view of ``raw``. Anything malformed (truncated, over-long varints, a known field
    of the wrong wire type, group or reserved wire types) raises InvalidArgument saying what and where."""
    if not isinstance(raw, bytes):  # the view handed out must be of an immutable object
        raw = bytes(raw)
    buf = memoryview(raw)
    values = [0, 0, 0, 0, 0]  # by field number; 2 (data) is kept apart
    data = buf[0:0]
    pos, end = 0, len(buf)
    try:
        while pos < end:
            number, wire, pos = _field(buf, pos)
            if wire == 0:
                value, pos = _varint(buf, pos)
                if number < len(values):
                    values[number] = value
            elif wire == 2:
                length, pos = _varint(buf, pos)
                if length > end - pos:
                    raise InvalidArgument(f"a {length}-byte field runs past the end (at byte {pos} of {end})")
                if number == 2:
                    data = buf[pos : pos + length]
                pos += length
            else:
                pos = _skip(buf, pos, wire)
    except InvalidArgument as exc:
        raise InvalidArgument(f"malformed ArtifactChunk: {exc.message}") from None
    return RawChunk(values[1], data, values[3], values[4] & 0xFFFFFFFF)


def _decode(raw: bytes) -> RawChunk | MalformedChunk:
    """DownloadArtifact's response deserializer. A malformed message is returned as the error to raise: gRPC
    would log an exception raised here and give the caller only INTERNAL "Exception deserializing response!"."""
    try:
        return parse_chunk(raw)
    except InvalidArgument as exc:
        return MalformedChunk(f"refused a {len(raw)}-byte message from the controller: {exc.message}")


class _Download:
    """One DownloadArtifact call, iterated as RawChunks; a malformed message cancels the call and raises
    :class:`MalformedChunk`. Everything else (``cancel()``, ``code()``, ...) is the gRPC call's."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[RawChunk]:
        return self

    def __next__(self) -> RawChunk:
        item = next(self._call)
        if isinstance(item, MalformedChunk):
            self._call.cancel()
            raise item
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


FetchFn = Callable[[str, int, int], Iterable[Any]]


class _GrpcFetch:
    """``fetch(sha, offset, max_bps)`` over one channel. It holds the channel: a single-threaded stream (see
    :data:`CHANNEL_OPTIONS`) does not keep it alive, and a channel collected mid-download closes."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata, timeout_s: float | None) -> None:
        self.channel = channel
        self.metadata = metadata  # read per call: the agent renews credentials in place
        self.timeout_s = timeout_s
        self._call = channel.unary_stream(
            DOWNLOAD_METHOD,
            request_serializer=agent_pb2.DownloadRequest.SerializeToString,
            response_deserializer=_decode,
        )

    def __call__(self, sha256: str, offset: int, max_bytes_per_s: int) -> Iterable[RawChunk]:
        request = agent_pb2.DownloadRequest(sha256=sha256, offset=offset, max_bytes_per_s=max_bytes_per_s)
        return _Download(self._call(request, metadata=tuple(self.metadata), timeout=self.timeout_s))


def grpc_fetch(channel: grpc.Channel, metadata: Metadata = (), timeout_s: float | None = None) -> FetchFn:
    """A fetch function over ``channel`` (create it with :data:`CHANNEL_OPTIONS`); the agent's credentials go
    in ``metadata``. The returned iterator wraps the gRPC call (it has ``cancel()``)."""
    return _GrpcFetch(channel, metadata, timeout_s)


def stub_fetch(stub: Any, metadata: Metadata = (), timeout_s: float | None = None) -> FetchFn:
    """A fetch function through a generated ``AgentServiceStub`` (protobuf objects; slower than grpc_fetch).
    Keep the stub's channel referenced: with :data:`CHANNEL_OPTIONS` the stub alone does not keep it open."""

    def fetch(sha256: str, offset: int, max_bytes_per_s: int) -> Iterable[Any]:
        request = agent_pb2.DownloadRequest(sha256=sha256, offset=offset, max_bytes_per_s=max_bytes_per_s)
        return stub.DownloadArtifact(request, metadata=tuple(metadata), timeout=timeout_s)

    return fetch
