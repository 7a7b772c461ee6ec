"""gRPC boundary of the blob transfer: ``AgentService.DownloadArtifact`` as an iterator of ArtifactChunk.

The servicer method is one line::

    def DownloadArtifact(self, request, context):
        return stream_artifact(self.blobs, request.sha256, request.offset, request.max_bytes_per_s,
                               gate=self.download_gate, context=context, wire=True)

``wire=True`` yields each chunk already encoded as its ArtifactChunk message, byte for byte what
``ArtifactChunk.SerializeToString()`` gives for the same fields. A :class:`ChunkEncoder` reads the file straight
into one buffer per stream that holds the message around the data (field header and length prefix before it,
total_size and crc32 after it); each message handed to gRPC is a new ``bytes`` copied from that buffer (grpcio's
response serializer must return ``bytes``, and a ``bytes`` object is never written into after it exists). That is
two copies of the data (page cache to buffer, buffer to message; the second from the CPU cache, ~40 us a MiB)
instead of the three of a protobuf object (file to bytes, into the message, serialized). It needs
the service registered with :func:`add_agent_service` (the generated ``add_AgentServiceServicer_to_server`` with
a DownloadArtifact response serializer that passes bytes through); with the generated registration use
``wire=False``.

With ``context`` given, errors become gRPC statuses here (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED
with a ``retry-after-ms`` trailing-metadata hint), including errors raised mid-stream, which an interceptor
wrapping only the method call would not see. Without ``context`` they propagate as SlmopsError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from controller.registry.blobstore.base import BlobStore
from controller.registry.metrics import ARTIFACT_BYTES, GRPC
from controller.registry.transfer import (
    DEFAULT_CHUNK,
    RETRY_AFTER_KEY,
    BlobRanges,
    Chunk,
    DownloadGate,
    TransferBusy,
    _Slot,
    crc32,
    open_ranges,
    read_chunks,
    read_exact,
)
from shared.errors import SlmopsError
from shared.pb import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

# ArtifactChunk field keys (field number << 3 | wire type): 1 offset, 3 total_size, 4 crc32 varints, 2 data bytes.
_OFFSET, _DATA, _TOTAL, _CRC = b"\x08", b"\x12", b"\x18", b"\x20"
_HEAD_ROOM = 2 * (1 + 10)  # offset and the data's length prefix: key + varint of at most 10 bytes each
_TAIL_ROOM = (1 + 10) + (1 + 5)  # total_size and crc32 (a uint32: at most 5 bytes)


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((value,))
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"{value} does not fit a uint64 varint")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _head(offset: int, size: int) -> bytes:
    """Fields 1 offset and 2's key and length, as protobuf writes them (proto3: a zero or empty field is left
    out)."""
    return (_OFFSET + _varint(offset) if offset else b"") + (_DATA + _varint(size) if size else b"")


def _tail(total: int, crc: int) -> bytes:
    if not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError(f"crc32 {crc} is not a uint32")
    return (_TOTAL + _varint(total) if total else b"") + (_CRC + _varint(crc) if crc else b"")


def encode_chunk(chunk: Chunk) -> bytes:
    """``chunk`` as its ArtifactChunk message (the bytes ``SerializeToString`` gives), with one copy of the data."""
    return b"".join((_head(chunk.offset, len(chunk.data)), chunk.data, _tail(chunk.total_size, chunk.crc32)))


class ChunkEncoder:
    """Reads chunks of a blob into one reusable buffer laid out as their ArtifactChunk message; returns each
    message as a new ``bytes`` object. One per stream (not thread-safe); grows when a chunk is larger."""

    def __init__(self, capacity: int = DEFAULT_CHUNK) -> None:
        self._capacity = 0
        self._view = memoryview(b"")
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self._view.release()
        self._capacity = capacity
        self._view = memoryview(bytearray(_HEAD_ROOM + capacity + _TAIL_ROOM))

    def read(self, fd: int, pos: int, n: int, total: int) -> bytes:
        """The ArtifactChunk of the ``n`` bytes at ``pos`` of the open blob ``fd`` of ``total`` bytes."""
        return self._message(lambda data: read_exact(fd, data, pos, total), pos, n, total)

    def read_ranges(self, ranges: BlobRanges, pos: int, n: int) -> bytes:
        """The ArtifactChunk of the ``n`` bytes at ``pos`` of ``ranges`` (a local file or a remote stream)."""
        return self._message(lambda data: ranges.fill(data, pos), pos, n, ranges.total)

    def _message(self, fill: Callable[[memoryview], None], pos: int, n: int, total: int) -> bytes:
        if n > self._capacity:
            self._grow(n)
        view = self._view
        end = _HEAD_ROOM + n
        with view[_HEAD_ROOM:end] as data:
            fill(data)
            crc = crc32(data)
        head, tail = _head(pos, n), _tail(total, crc)
        start = _HEAD_ROOM - len(head)
        view[start:_HEAD_ROOM] = head
        view[end : end + len(tail)] = tail
        with view[start : end + len(tail)] as message:
            return message.tobytes()


def read_encoded(fd: int, pos: int, n: int, total: int) -> bytes:
    """The ArtifactChunk of ``n`` bytes at ``pos`` of the open blob ``fd`` (a one-off :class:`ChunkEncoder`)."""
    return ChunkEncoder(n).read(fd, pos, n, total)


def _encoded(ranges: BlobRanges) -> Iterator[bytes]:
    encoder = ChunkEncoder(ranges.chunk_size)
    served = ARTIFACT_BYTES.labels(GRPC)
    for pos, n in ranges:
        yield encoder.read_ranges(ranges, pos, n)
        served.inc(n)  # handed to gRPC


def _messages(ranges: BlobRanges) -> Iterator[agent_pb2.ArtifactChunk]:
    served = ARTIFACT_BYTES.labels(GRPC)
    for chunk in read_chunks(ranges):
        yield chunk_to_pb(chunk)
        served.inc(len(chunk.data))


def serialize_chunk(message: agent_pb2.ArtifactChunk | bytes) -> bytes:
    """DownloadArtifact's response serializer: pre-encoded chunks pass through, messages are serialized."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


class _Capture:
    """Stands in for a server to collect the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_agent_service(servicer: agent_pb2_grpc.AgentServiceServicer, server: grpc.Server) -> None:
    """Register AgentService like ``agent_pb2_grpc.add_AgentServiceServicer_to_server`` does, except that
    DownloadArtifact's responses may be pre-encoded bytes (``stream_artifact(..., wire=True)``)."""
    capture = _Capture()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, capture)
    handlers = capture.handlers
    download = handlers["DownloadArtifact"]
    handlers["DownloadArtifact"] = grpc.unary_stream_rpc_method_handler(
        download.unary_stream,
        request_deserializer=download.request_deserializer,
        response_serializer=serialize_chunk,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


def chunk_to_pb(chunk: Chunk) -> agent_pb2.ArtifactChunk:
    return agent_pb2.ArtifactChunk(offset=chunk.offset, data=chunk.data, total_size=chunk.total_size, crc32=chunk.crc32)


def stream_artifact(
    blobs: BlobStore,
    request_sha: str,
    offset: int = 0,
    max_bps: int = 0,
    *,
    gate: DownloadGate | None = None,
    context: grpc.ServicerContext | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    server_max_bps: int = 0,
    wire: bool = False,
) -> Iterator[agent_pb2.ArtifactChunk | bytes]:
    """Validate, take a download slot, and return the chunk stream of one blob from ``offset``.

    ``max_bps`` is the limit the agent asked for, ``server_max_bps`` the controller's own cap per download;
    the smaller non-zero one applies.
    """
    limits = [int(v) for v in (max_bps, server_max_bps) if v and int(v) > 0]
    limit = min(limits) if limits else 0
    ranges = None
    try:
        ranges = open_ranges(blobs, request_sha, int(offset), chunk_size, limit)
        slot = gate.acquire() if gate is not None else None
    except SlmopsError as exc:
        if ranges is not None:
            ranges.close()
        if context is None:
            raise
        _abort(context, exc)
        raise  # unreachable: abort raises
    if slot is not None and context is not None:
        context.add_callback(slot.release)
    messages = _encoded(ranges) if wire else _messages(ranges)
    return _pb_stream(messages, slot, context, request_sha)


def _pb_stream(
    messages: Iterator[agent_pb2.ArtifactChunk] | Iterator[bytes],
    slot: _Slot | None,
    context: grpc.ServicerContext | None,
    sha: str,
) -> Iterator[agent_pb2.ArtifactChunk | bytes]:
    try:
        yield from messages
    except SlmopsError as exc:
        if context is None:
            raise
        _abort(context, exc)
    except OSError as exc:
        log.warning("reading blob %s failed mid-stream: %s", sha[:12], exc)
        if context is None:
            raise
        context.abort(grpc.StatusCode.UNAVAILABLE, f"reading blob {sha[:12]}… failed: {exc}; retry")
    finally:
        if slot is not None:
            slot.release()


def _abort(context: grpc.ServicerContext, exc: SlmopsError) -> None:
    if isinstance(exc, TransferBusy):
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(exc.retry_after_s * 1000))),))
    code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)
    context.abort(code, exc.message)
