"""gRPC boundary of the blob transfer: ``AgentService.DownloadArtifact`` as an iterator of ArtifactChunk.

The servicer method is one line::

    def DownloadArtifact(self, request, context):
        return stream_artifact(self.blobs, request.sha256, request.offset, request.max_bytes_per_s,
                               gate=self.download_gate, context=context, wire=True)

``wire=True`` yields each chunk already encoded in the ArtifactChunk wire format (one copy of the data instead
of three through a protobuf object; ~1.4x the throughput on loopback). It needs the service registered with
:func:`add_agent_service` (the generated ``add_AgentServiceServicer_to_server`` with a DownloadArtifact response
serializer that passes bytes through); with the generated registration use ``wire=False``.

With ``context`` given, errors become gRPC statuses here (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED
with a ``retry-after-ms`` trailing-metadata hint), including errors raised mid-stream, which an interceptor
wrapping only the method call would not see. Without ``context`` they propagate as SlmopsError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from controller.registry.blobs import BlobStore
from controller.registry.transfer import (
    DEFAULT_CHUNK,
    RETRY_AFTER_KEY,
    Chunk,
    DownloadGate,
    TransferBusy,
    _Slot,
    iter_chunks,
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
    try:
        chunks = iter_chunks(blobs, request_sha, int(offset), chunk_size, limit)
        slot = gate.acquire() if gate is not None else None
    except SlmopsError as exc:
        if context is None:
            raise
        _abort(context, exc)
        raise  # unreachable: abort raises
    if slot is not None and context is not None:
        context.add_callback(slot.release)
    return _pb_stream(chunks, slot, context, request_sha, encode_chunk if wire else chunk_to_pb)


def _pb_stream(
    chunks: Iterator[Chunk],
    slot: _Slot | None,
    context: grpc.ServicerContext | None,
    sha: str,
    convert: Callable[[Chunk], agent_pb2.ArtifactChunk | bytes],
) -> Iterator[agent_pb2.ArtifactChunk | bytes]:
    try:
        for chunk in chunks:
            yield convert(chunk)
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
