"""The artifact byte path: ``GET /v1/artifacts/<sha256>?t=<token>`` over HTTP/1.1 (HTTPS with the gRPC CA).

Control stays on gRPC: an agent asks ``GetArtifactUrls`` for short-lived URLs (see urltokens.py), then reads the
bytes here with ``Range: bytes=a-b`` (206 with Content-Range; no Range: 200; a range past the end: 416; a bad
token: 403 with the reason as the body). Each connection has its own thread; plaintext bodies go out with
``socket.sendfile`` (zero-copy), TLS bodies (Python's ssl has no kernel TLS) with ``os.preadv`` into a reused
4 MiB buffer and one ssl write per read, which keeps the copy loop in C and off the GIL. Connection threads run
at a lower priority than the rest of the controller, so unary RPCs keep their latency during a rollout.

A download gate (controller/registry/transfer.py ``DownloadGate``; ``artifact_max_downloads``, default from the
cores) admits at most K bodies at once; a GET past them waits for a slot (up to GATE_QUEUE of them, GATE_WAIT_S
each), past that it gets 503 with ``Retry-After`` (the agent waits that long, see agent/install/http_fetch.py).
Every body byte sent is counted in ``slmops_controller_artifact_bytes_total{path="http"}`` (registry/metrics.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import ssl
import struct
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from controller.registry.blobstore.base import SHA_RE
from controller.registry.metrics import ARTIFACT_ACTIVE, ARTIFACT_BUSY, ARTIFACT_BYTES, HTTP
from controller.registry.transfer import DownloadGate, TransferBusy
from controller.registry.urltokens import TokenRejected, UrlTokens

log = logging.getLogger(__name__)
PREFIX = "/v1/artifacts/"
TLS_BUFFER = 4 << 20
MAX_CONNECTIONS = 256
IO_TIMEOUT_S = 60.0
GATE_QUEUE = 64  # requests that wait for a download slot (within MAX_CONNECTIONS); more get 503
GATE_WAIT_S = 20.0  # the longest one waits before its 503 (well under the agent's 60 s read timeout)
SENDER_NICE = 10  # connection threads run at this nice value (see _lower_priority)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Refused(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a single-range header, None without one; 416 outside the blob."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise _Refused(416, f"unsupported Range {header!r}: one range, bytes=A-B", {"Content-Range": f"*/{size}"})
    first_text, last_text = match.groups()
    if first_text == "":  # suffix range: the last N bytes
        first, last = max(0, size - int(last_text)), size - 1
    else:
        first = int(first_text)
        last = min(size - 1, int(last_text)) if last_text else size - 1
    if first >= size or last < first:
        raise _Refused(416, f"range {header!r} is outside the blob of {size} bytes", {"Content-Range": f"*/{size}"})
    return first, last


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ArtifactHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("artifact http %s: " + format, self.client_address[0], *args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        try:
            fh, first, last, size = self._open()
        except _Refused as exc:
            self._refuse(exc)
            return
        with fh:
            slot = None
            if body and size:
                try:
                    slot = self.server.gate.acquire() if self.server.gate is not None else None
                except TransferBusy as exc:
                    ARTIFACT_BUSY.inc()
                    retry = str(max(1, math.ceil(exc.retry_after_s)))
                    self._refuse(_Refused(503, exc.message, {"Retry-After": retry}))
                    return
            try:
                self._send(fh, first, last, size, body)
            finally:
                if slot is not None:
                    slot.release()

    def _send(self, fh: Any, first: int, last: int, size: int, body: bool) -> None:
        status = 200 if (first, last) == (0, size - 1) and "Range" not in self.headers else 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1 if size else 0))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body and size:
            self.wfile.flush()
            self.server.send_body(self.connection, fh, first, last - first + 1)

    def _open(self) -> tuple[Any, int, int, int]:
        url = urlsplit(self.path)
        sha = url.path[len(PREFIX) :] if url.path.startswith(PREFIX) else ""
        if not SHA_RE.match(sha):
            raise _Refused(404, f"no such resource {url.path!r}: GET {PREFIX}<sha256>")
        token = (parse_qs(url.query).get("t") or [""])[0]
        auth = self.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        try:
            self.server.tokens.check(token, self.headers.get("X-Slmops-Agent-Id", ""), sha)
        except TokenRejected as exc:
            raise _Refused(403, exc.reason) from None
        path = self.server.blobs.local_path(sha)  # None: not stored here (a remote store presigns instead)
        try:
            fh = open(path, "rb") if path is not None else None  # noqa: SIM115 - closed by _serve
        except OSError:  # the file vanished
            fh = None
        if fh is None:
            raise _Refused(404, f"blob {sha} is not in the registry")
        size = os.fstat(fh.fileno()).st_size
        try:
            span = parse_range(self.headers.get("Range", ""), size)
        except _Refused:
            fh.close()
            raise
        first, last = span if span is not None else (0, size - 1)
        return fh, first, last, size

    def _refuse(self, exc: _Refused) -> None:
        text = (exc.reason + "\n").encode()
        self.send_response(exc.status)
        for key, value in exc.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)


class ArtifactHttpServer(ThreadingHTTPServer):
    """Serves blobs of ``blobs`` (anything with ``path(sha) -> Path``) to holders of ``tokens``' tokens."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        blobs: Any,
        tokens: UrlTokens,
        tls: ssl.SSLContext | None = None,
        gate: DownloadGate | None = None,
    ) -> None:
        self.blobs, self.tokens, self.tls, self.gate = blobs, tokens, tls, gate
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kernel_timeouts(sock, IO_TIMEOUT_S)
        if self.tls is not None:  # the handshake runs on the connection's thread (finish_request)
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("artifact http: %d connections open, refusing %s", MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        _lower_priority()
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                log.info("artifact http: TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-body is routine (it resumes with a Range): no traceback on stderr."""
        log.info("artifact http: connection from %s ended: %s", client_address[0], sys.exc_info()[1])

    def send_body(self, sock: socket.socket, fh: Any, offset: int, count: int) -> None:
        ARTIFACT_ACTIVE.inc()
        try:
            self._send_body(sock, fh, offset, count)
        finally:
            ARTIFACT_ACTIVE.dec()

    def _send_body(self, sock: socket.socket, fh: Any, offset: int, count: int) -> None:
        if not isinstance(sock, ssl.SSLSocket):
            sent = 0
            try:
                sent = sock.sendfile(fh, offset, count)  # os.sendfile: zero-copy
            finally:  # a client gone mid-body: what the kernel took still counts
                ARTIFACT_BYTES.labels(HTTP).inc(sent or max(0, fh.tell() - offset))
            return
        buf = bytearray(min(TLS_BUFFER, count))
        view = memoryview(buf)
        fd = fh.fileno()
        while count > 0:
            n = os.preadv(fd, [view[: min(len(buf), count)]], offset)
            if n <= 0:
                raise OSError(f"blob ended {count} bytes early")
            sock.sendall(view[:n])
            ARTIFACT_BYTES.labels(HTTP).inc(n)
            offset += n
            count -= n

    def start(self) -> ArtifactHttpServer:
        self._thread = threading.Thread(target=self.serve_forever, name="artifact-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
        self.server_close()


def artifact_gate(slots: int = 0) -> DownloadGate:
    """The artifact server's download gate: ``slots`` bodies at once (0: one per two CPU cores, so TLS leaves
    the other half to the RPCs; measured in bench/rollout_gate.py). Up to
    ``GATE_QUEUE`` more requests wait for a slot (a waiting connection costs a thread and no CPU, and a slot never
    idles while agents wait) for at most ``GATE_WAIT_S``; the rest get 503 with ``Retry-After: 1``."""
    slots = slots or max(1, (os.cpu_count() or 2) // 2)
    return DownloadGate(slots=slots, max_waiting=GATE_QUEUE, wait_s=GATE_WAIT_S, retry_after_s=1.0)


def _lower_priority() -> None:
    """This connection's thread yields the CPU to the controller's RPCs (Linux: the nice value of one thread);
    bulk bytes may wait a little, heartbeats and reports should not."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not permitted: same priority as the rest
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SENDER_NICE)


def kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking socket with the kernel's send/receive timeouts: a Python-level timeout would make the socket
    non-blocking, and ssl would then write one 16 KiB record per Python call instead of a whole buffer in C."""
    sock.settimeout(None)
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def server_tls_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context from the controller's certificate and key (the same the gRPC port presents)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain reads files only
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert, "wb") as fh:
            fh.write(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        context.load_cert_chain(cert, key)
    return context


def public_url(bound: tuple[str, int], tls: bool, configured: str = "") -> str:
    """The base URL agents use: ``configured`` (a load balancer) or the bound address."""
    if configured:
        return configured.rstrip("/")
    host = bound[0]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{bound[1]}"


class ArtifactUrls:
    """What GetArtifactUrls hands out: the blob store's own presigned URL where it has one (S3), else this
    controller's ``<base>/v1/artifacts/<sha>?t=<token>``."""

    def __init__(self, blobs: Any, tokens: UrlTokens, base_url: str) -> None:
        self.blobs, self.tokens, self.base_url = blobs, tokens, base_url

    def url_for(self, agent_id: str, sha256: str) -> tuple[str, int]:
        presign = getattr(self.blobs, "presign_get", None)
        if callable(presign):
            url = presign(sha256, self.tokens.ttl_s)
            if url:
                return str(url), int(self.tokens.clock()) + self.tokens.ttl_s
        token, expires = self.tokens.mint(agent_id, sha256)
        return f"{self.base_url}{PREFIX}{sha256}?t={token}", expires
