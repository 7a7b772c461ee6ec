"""gRPC boundary of the blob transfer: ``AgentService.DownloadArtifact`` as an iterator of ArtifactChunk.

The servicer method is one line::

    def DownloadArtifact(self, request, context):
        return stream_artifact(self.blobs, request.sha256, request.offset, request.max_bytes_per_s,
                               gate=self.download_gate, context=context, wire=True)

``wire=True`` yields each chunk already encoded in the ArtifactChunk wire format, the file's bytes read straight
into the message (one copy of the data instead of three through a protobuf object). It needs the service
registered with :func:`add_agent_service` (the generated ``add_AgentServiceServicer_to_server`` with a
DownloadArtifact response serializer that passes bytes through); with the generated registration use
``wire=False``.

With ``context`` given, errors become gRPC statuses here (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED
with a ``retry-after-ms`` trailing-metadata hint), including errors raised mid-stream, which an interceptor
wrapping only the method call would not see. Without ``context`` they propagate as SlmopsError.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator

import grpc

from controller.registry.blobs import BlobStore
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


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(chunk: Chunk) -> bytes:
    """The ArtifactChunk wire format (fields 1 offset, 3 total_size, 4 crc32, then 2 data; field order is free
    in protobuf), built with a single copy of the data."""
    head = b"".join(
        (
            b"\x08",
            _varint(chunk.offset),
            b"\x18",
            _varint(chunk.total_size),
            b"\x20",
            _varint(chunk.crc32),
            b"\x12",
            _varint(len(chunk.data)),
        )
    )
    return head + chunk.data


def _varint5(value: int) -> bytes:
    """A uint32 as a varint of always 5 bytes (a longer than minimal varint is valid protobuf wire format)."""
    return bytes(
        (
            (value & 0x7F) | 0x80,
            ((value >> 7) & 0x7F) | 0x80,
            ((value >> 14) & 0x7F) | 0x80,
            ((value >> 21) & 0x7F) | 0x80,
            (value >> 28) & 0x0F,
        )
    )


def _new_bytes() -> Callable[[int], tuple[bytes, memoryview]] | None:
    """``alloc(n) -> (bytes object, writable view of it)`` through the C API, or None where there is none
    (not CPython). ``PyBytes_FromStringAndSize(NULL, n)`` returns an uninitialized object that the C API
    lets its creator fill before anyone else sees it; the file is read straight into it."""
    try:
        from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
        as_string = ctypes.pythonapi.PyBytes_AsString
    except AttributeError:  # pragma: no cover - not CPython
        return None
    from_size.argtypes, from_size.restype = [ctypes.c_char_p, ctypes.c_ssize_t], ctypes.py_object
    as_string.argtypes, as_string.restype = [ctypes.py_object], ctypes.c_void_p

    def alloc(n: int) -> tuple[bytes, memoryview]:
        obj = from_size(None, n)
        return obj, memoryview((ctypes.c_char * n).from_address(as_string(obj))).cast("B")

    return alloc


_alloc = _new_bytes()


def read_encoded(fd: int, pos: int, n: int, total: int) -> bytes:
    """The ArtifactChunk of ``n`` bytes at ``pos`` of the open blob ``fd``, encoded with one copy of the data
    (page cache to message). Fields 1 offset, 3 total_size, 2 data, then 4 crc32 as a 5-byte varint, so that
    the message's size is known before the crc is."""
    if _alloc is None:  # pragma: no cover - not CPython
        data = bytearray(n)
        read_exact(fd, memoryview(data), pos, total)
        return encode_chunk(Chunk(pos, bytes(data), total, crc32(data)))
    head = b"".join((b"\x08", _varint(pos), b"\x18", _varint(total), b"\x12", _varint(n)))
    end = len(head) + n
    message, view = _alloc(end + 6)
    with view:
        view[: len(head)] = head
        data = view[len(head) : end]
        read_exact(fd, data, pos, total)
        view[end:] = b"\x20" + _varint5(crc32(data))
        data.release()
    return message


def _encoded(ranges: BlobRanges) -> Iterator[bytes]:
    fd = ranges.fileno()
    for pos, n in ranges:
        yield read_encoded(fd, pos, n, ranges.total)


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
    messages = _encoded(ranges) if wire else (chunk_to_pb(c) for c in read_chunks(ranges))
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
