"""What an artifact download is measured against, in the same run: raw loopback TCP, the disk, and gRPC itself.

- ``serve_tcp`` / ``tcp_file_transfer`` / ``tcp_memory_transfer``: a plain socket server sending a file (readinto
  + sendall) and a receiver writing it to a file, or only counting it. The issue's baseline.
- ``tcp_durable_transfer``: the same receiver, but with the downloader's writeback and final fsync: what raw TCP
  gives when the file must survive a crash, as a downloaded artifact must.
- ``durable_write``: the blob copied locally the way the downloader writes, no network: the disk's ceiling.
- ``serve_bare_grpc`` / ``bare_grpc_transfer``: grpcio's own ceiling for a server stream on this machine. The
  server yields one pre-built payload of the chunk size again and again (no file, no encoding, no checks) and
  the client counts the messages, on a channel with the agent's options (``rollout.agent_channel``). No
  artifact download written in Python over grpcio can be faster than this.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from agent.install.stream import Writeback

MB = 1_000_000
BUF = 1 << 20
BARE_SERVICE, BARE_METHOD = "bench.Bare", "Stream"


def make_blob(path: Path, size: int) -> Path:
    """Random (incompressible, like weights) bytes; reused across runs when the size matches."""
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, 8 << 20)
                fh.write(os.urandom(n))
                left -= n
    return path


# --- raw TCP ---------------------------------------------------------------------------------------------
def serve_tcp(path: Path) -> None:
    """Child: send ``path`` to every connection (readinto + sendall, like a plain file server)."""
    srv = socket.create_server(("127.0.0.1", 0))
    print(f"127.0.0.1:{srv.getsockname()[1]}", flush=True)
    buf = bytearray(BUF)  # one reused buffer: no allocation per block, the fastest plain copy loop
    view = memoryview(buf)
    while True:
        conn, _ = srv.accept()
        with conn, open(path, "rb") as fh:
            while n := fh.readinto(buf):
                conn.sendall(view[:n])


def _receive_into_file(address: str, dest: Path, expected: int, durable: bool) -> float:
    host, port = address.rsplit(":", 1)
    buf = bytearray(BUF)
    view = memoryview(buf)
    got = 0
    started = time.perf_counter()
    with socket.create_connection((host, int(port))) as conn, open(dest, "wb", buffering=0) as out:
        writeback = Writeback(out.fileno(), 0) if durable else None
        while n := conn.recv_into(buf):
            out.write(view[:n])
            got += n
            if writeback is not None:
                writeback.wrote(got)
        if durable:
            os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    if got != expected:
        raise RuntimeError(f"TCP baseline moved {got} of {expected} bytes")
    dest.unlink()
    return got / elapsed / MB


def tcp_file_transfer(address: str, dest: Path, expected: int) -> float:
    """Receive the TCP server's file into ``dest`` (page cache, no fsync); returns MB/s."""
    return _receive_into_file(address, dest, expected, durable=False)


def tcp_durable_transfer(address: str, dest: Path, expected: int) -> float:
    """As :func:`tcp_file_transfer`, with the downloader's writeback and a final fsync; returns MB/s."""
    return _receive_into_file(address, dest, expected, durable=True)


def tcp_memory_transfer(address: str, expected: int) -> float:
    host, port = address.rsplit(":", 1)
    buf = bytearray(BUF)
    got = 0
    started = time.perf_counter()
    with socket.create_connection((host, int(port))) as conn:
        while n := conn.recv_into(buf):
            got += n
    if got != expected:
        raise RuntimeError(f"TCP baseline moved {got} of {expected} bytes")
    return got / (time.perf_counter() - started) / MB


def durable_write(src: Path, dest: Path) -> float:
    """Copy ``src`` into a new file ``dest`` the way the downloader writes (writeback started as it goes, fsync
    at the end), without any network; returns MB/s: the ceiling of a durable download on this disk."""
    buf = bytearray(BUF)
    view = memoryview(buf)
    got = 0
    started = time.perf_counter()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        writeback = Writeback(fd, 0)
        with open(src, "rb") as fh:
            while n := fh.readinto(buf):
                os.write(fd, view[:n])
                got += n
                writeback.wrote(got)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    dest.unlink()
    return got / elapsed / MB


# --- grpcio's own ceiling --------------------------------------------------------------------------------
def serve_bare_grpc(chunk: int, workers: int) -> None:
    """Child: a gRPC server whose one server-streaming method yields the same ``chunk``-byte payload until the
    requested number of bytes (a decimal string in the request) has gone out."""
    payload = os.urandom(chunk)

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        left = int(request)
        while left > 0:
            yield payload if left >= chunk else payload[:left]
            left -= chunk

    identity = lambda raw: raw  # noqa: E731 - bytes in, bytes out: no (de)serialization at all
    handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=identity, response_serializer=identity)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(BARE_SERVICE, {BARE_METHOD: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def bare_grpc_transfer(channel: grpc.Channel, size: int) -> float:
    """Receive ``size`` bytes from :func:`serve_bare_grpc` and only count them; returns MB/s."""
    call = channel.unary_stream(f"/{BARE_SERVICE}/{BARE_METHOD}")
    got = 0
    started = time.perf_counter()
    for message in call(str(size).encode()):
        got += len(message)
    elapsed = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"bare gRPC stream moved {got} of {size} bytes")
    return got / elapsed / MB
