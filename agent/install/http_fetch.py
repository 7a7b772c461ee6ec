"""HTTP(S) boundary of the agent's downloader: the same ``fetch(sha, offset, max_bps) -> chunks`` as grpc_fetch.

Control stays on gRPC: ``GetArtifactUrls`` hands out short-lived URLs (cached here until a minute before they
expire); the bytes come with ``GET <url>`` and ``Range: bytes=<offset>-`` over TLS with the pinned CA (stdlib
http.client: the edge install has no httpx), read into fresh 4 MiB buffers that transfer.py/stream.py write
durably as they do gRPC chunks (resume from the partial file, fsync, sha256 in VERIFY). TLS protects each byte
on the wire, so chunks carry no crc32 (``crc32=None``). A 503 (all download slots busy) is :class:`HttpBusy`:
the downloader waits the server's ``Retry-After`` (tenacity, shared/retry.py) and asks again.

:class:`FallbackFetch` uses HTTP while the controller answers GetArtifactUrls and gRPC ``DownloadArtifact``
otherwise: an older controller (UNIMPLEMENTED) for good, an unreachable artifact port for that attempt.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import grpc

from shared.errors import InstallError, IntegrityError, NotFound, TransferError
from shared.pb import agent_pb2

log = logging.getLogger(__name__)
CHUNK = 4 << 20
REFRESH_BEFORE_S = 60.0
GET_URLS_METHOD = "/slmops.v1.AgentService/GetArtifactUrls"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")

FetchFn = Callable[[str, int, int], Any]
UrlsFn = Callable[[Sequence[str]], list[tuple[str, str, int]]]


class HttpChunk(NamedTuple):
    offset: int
    data: memoryview
    total_size: int
    crc32: int | None = None  # TLS guards the bytes in transit; the file's sha256 is checked in VERIFY


class HttpUnsupported(TransferError):
    """The controller has no HTTP byte path (UNIMPLEMENTED): use gRPC."""


class HttpUnreachable(TransferError):
    """The artifact URL could not be connected to: this attempt goes over gRPC."""


class HttpBusy(TransferError):
    """503: every download slot of the server is taken. The downloader waits ``hint_s`` (the server's
    ``Retry-After``) before it asks again; such a wait does not count as an attempt without progress."""

    busy = True

    def __init__(self, message: str, hint_s: float) -> None:
        super().__init__(message)
        self.hint_s = hint_s


def retry_after_s(value: str | None, default: float = 1.0) -> float:
    """Seconds from a ``Retry-After`` header (delay-seconds; an HTTP date or garbage: ``default``), at most 60."""
    try:
        return min(60.0, max(0.0, float(value))) if value else default
    except ValueError:
        return default


def grpc_urls(channel: grpc.Channel, metadata: Sequence[tuple[str, str]], timeout_s: float = 15.0) -> UrlsFn:
    """``GetArtifactUrls`` over ``channel``; ``metadata`` is read per call (credentials renewed in place)."""
    call = channel.unary_unary(
        GET_URLS_METHOD,
        request_serializer=agent_pb2.ArtifactUrlsRequest.SerializeToString,
        response_deserializer=agent_pb2.ArtifactUrlsResponse.FromString,
    )

    def urls(shas: Sequence[str]) -> list[tuple[str, str, int]]:
        try:
            request = agent_pb2.ArtifactUrlsRequest(sha256=list(shas))
            response = call(request, metadata=tuple(metadata), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                raise HttpUnsupported(f"the controller has no artifact URLs: {exc.details()}") from exc  # type: ignore[attr-defined]
            raise
        return [(u.sha256, u.url, u.expires_unix) for u in response.urls]

    return urls


def client_tls_context(ca_pem: bytes | None) -> ssl.SSLContext:
    """System roots (presigned object-store URLs) plus the controller CA pinned at enrollment."""
    context = ssl.create_default_context()
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem.decode())
    return context


class HttpFetch:
    """``fetch(sha, offset, max_bps)`` over artifact URLs from ``urls``; ``agent_id()`` goes in each request."""

    def __init__(
        self,
        urls: UrlsFn,
        agent_id: Callable[[], str],
        ca_pem: bytes | None,
        controller_host: str = "127.0.0.1",
        timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.urls, self.agent_id, self.timeout_s, self.clock = urls, agent_id, timeout_s, clock
        self.context = client_tls_context(ca_pem)
        self.controller_host = controller_host
        self._cache: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def url(self, sha: str, fresh: bool = False) -> str:
        with self._lock:
            cached = self._cache.get(sha)
            if fresh or cached is None or cached[1] - self.clock() < REFRESH_BEFORE_S:
                for digest, url, expires in self.urls([sha]):
                    self._cache[digest.lower()] = (url, int(expires))
                cached = self._cache.get(sha)
            if cached is None:
                raise TransferError(f"the controller gave no URL for {sha[:12]}…")
            return cached[0]

    def __call__(self, sha: str, offset: int, max_bytes_per_s: int) -> Iterator[HttpChunk]:
        response = self._open(sha, offset, fresh=False)
        if response.status == 403:
            reason = _body(response)
            log.info("artifact URL for %s refused (%s): asking for a new one", sha[:12], reason)
            response = self._open(sha, offset, fresh=True)
        return self._chunks(response, sha, offset, max_bytes_per_s)

    def _open(self, sha: str, offset: int, fresh: bool) -> http.client.HTTPResponse:
        url = urlsplit(self.url(sha, fresh))
        host = self.controller_host if url.hostname in _WILDCARD_HOSTS else (url.hostname or "")
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, url.port, timeout=self.timeout_s, context=self.context
            )
        else:
            conn = http.client.HTTPConnection(host, url.port, timeout=self.timeout_s)
        headers = {"Range": f"bytes={offset}-", "X-Slmops-Agent-Id": self.agent_id()}
        try:
            conn.connect()
            _blocking_with_kernel_timeouts(conn.sock, self.timeout_s)
            conn.request("GET", f"{url.path}?{url.query}" if url.query else url.path, headers=headers)
            return conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise InstallError(f"artifact server {host}: {exc.verify_message}") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise HttpUnreachable(f"artifact server {host}:{url.port}: {exc}") from exc

    def _chunks(self, response: http.client.HTTPResponse, sha: str, offset: int, max_bps: int) -> Iterator[HttpChunk]:
        total = _check_status(response, sha, offset)
        started, pos = time.monotonic(), offset
        try:
            while pos < total:
                buf = bytearray(min(CHUNK, total - pos))
                n = response.readinto(buf)
                if not n:
                    raise TransferError(f"artifact stream of {sha[:12]}… ended at byte {pos} of {total}")
                yield HttpChunk(pos, memoryview(buf)[:n], total)
                pos += n
                if max_bps > 0:
                    ahead = (pos - offset) / max_bps - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except (OSError, http.client.HTTPException) as exc:
            raise TransferError(f"artifact stream of {sha[:12]}… broke at byte {pos}: {exc}") from exc
        finally:
            response.close()


def _blocking_with_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """A blocking socket (ssl then reads whole buffers in C, not one record per Python-level wait) that still
    times out, through the kernel's SO_RCVTIMEO/SO_SNDTIMEO."""
    sock.settimeout(None)
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _body(response: http.client.HTTPResponse) -> str:
    try:
        return response.read(4096).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        response.close()


def _check_status(response: http.client.HTTPResponse, sha: str, offset: int) -> int:
    """The blob's size from a 200/206 answer starting at ``offset``; other answers raise what they mean."""
    status = response.status
    if status == 206:
        match = _CONTENT_RANGE.match(response.getheader("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            response.close()
            raise TransferError(f"artifact server answered a range other than from byte {offset}")
        return int(match.group(3))
    if status == 200 and offset == 0:
        return int(response.getheader("Content-Length", "0"))
    reason = _body(response)
    if status == 503:
        wait = retry_after_s(response.getheader("Retry-After"))
        raise HttpBusy(f"artifact server busy for {sha[:12]}…: {reason} (retry after {wait:g} s)", wait)
    if status == 404:
        raise NotFound(f"the controller has no blob {sha[:12]}…: {reason}")
    if status == 416:
        raise IntegrityError(f"blob {sha[:12]}… is shorter than byte {offset}: {reason}")
    if status == 403 or 400 <= status < 500:
        raise InstallError(f"artifact download of {sha[:12]}… refused ({status}): {reason}")
    raise TransferError(f"artifact server answered {status} for {sha[:12]}…: {reason}")


class FallbackFetch:
    """HTTP when the controller offers it, gRPC ``DownloadArtifact`` otherwise (see the module docstring)."""

    def __init__(self, http_fetch: FetchFn, grpc_fetch: FetchFn, recheck_s: float = 600.0) -> None:
        self.http, self.grpc = http_fetch, grpc_fetch
        self.recheck_s = recheck_s  # an upgraded controller may offer URLs later: ask again after this long
        self._grpc_until = 0.0

    @property
    def http_supported(self) -> bool:
        return time.monotonic() >= self._grpc_until

    def __call__(self, sha: str, offset: int, max_bytes_per_s: int) -> Any:
        if self.http_supported:
            try:
                return self.http(sha, offset, max_bytes_per_s)
            except HttpUnsupported as exc:
                log.info("downloading over gRPC: %s", exc.message)
                self._grpc_until = time.monotonic() + self.recheck_s
            except HttpUnreachable as exc:
                log.warning("%s: this attempt goes over gRPC", exc.message)
        return self.grpc(sha, offset, max_bytes_per_s)
