"""HTTP limits of the serving API: the request body's size, and how long a client may take to send a request.

- :class:`BodyLimit` (pure ASGI middleware) reads each request's body before the app sees it. A body declared
  bigger than ``max_body_bytes`` (``Content-Length``) is refused with 413 before one byte of it is read; a
  chunked body is counted while it arrives and refused as soon as it crosses the limit. What was read is
  dropped and the connection is closed (``Connection: close``), so the rest is never read. The whole body
  reaches the app as one ``http.request`` message; later ``receive()`` calls (the disconnect watch) go to the
  server.
- :func:`protocol_with_deadline` wraps uvicorn's HTTP protocol class with one timer per connection: a
  request's head must be complete ``read_timeout_s`` after the connection opened or its previous response
  ended (else the connection is closed), and its body ``read_timeout_s`` after the head (else 408, closed).
  uvicorn has no such timer: a connection that sends nothing, a few header bytes now and then, or half a
  body, stays open forever (its keep-alive timer runs only between requests, and any byte cancels it). The
  timer lives in the protocol rather than around ``receive()`` in the middleware: a timeout scope per request
  cost 10-35 us there, the timer costs nothing for a request that arrives in one piece.

Both answers use the OpenAI error body of :mod:`agent.serving.errors`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.serving.errors import error_body


class _TooLarge(Exception):
    pass


def too_large_message(max_bytes: int) -> str:
    return (
        f"the request body is larger than this agent's limit of {max_bytes} bytes (max_body_bytes); "
        "send a shorter prompt or fewer messages"
    )


def timeout_message(timeout_s: float) -> str:
    return (
        f"the request body did not arrive within {timeout_s:g} s of its headers (read_timeout_s); "
        "send the whole request at once"
    )


def _timeout_response(timeout_s: float) -> bytes:
    payload = json.dumps(error_body(timeout_message(timeout_s), "invalid_request_error", None, "request_timeout"))
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return (head + payload).encode()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """Reads bodies of at most ``max_bytes``; ``on_reject(status)`` counts refusals."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, on_reject: Callable[[int], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, 413, too_large_message(self.max_bytes), "request_too_large")
            return
        try:
            body = await self._read(receive)
        except _TooLarge:
            await self._refuse(send, 413, too_large_message(self.max_bytes), "request_too_large")
            return
        if body is None:  # the client left (or was closed by the read deadline) before its body arrived
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send: Send, status: int, message: str, code: str) -> None:
        if self.on_reject is not None:
            self.on_reject(status)
        payload = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),  # the rest of the body is never read
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


class _RequestDeadline:
    """Mixin over a uvicorn HTTP protocol: the read deadlines of one connection (see the module docstring).

    After each read: no request in progress -> the head timer keeps running (armed when the connection
    opened or the last response ended); a request whose body is still coming -> a body timer, armed once for
    that request; the whole request in -> no timer (the app has it).
    """

    read_timeout_s: float = 15.0
    _deadline: asyncio.TimerHandle | None = None
    _timed: object = None  # the request cycle the body timer runs for
    # provided by the uvicorn protocol class
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._track(response_ended=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _track(self, response_ended: bool = False) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # waiting for a request head
            if response_ended:
                self._arm()
        elif not cycle.more_body:  # the whole request is in
            self._disarm()
        elif self._timed is not cycle:  # a new request whose body is still coming
            self._arm()
            self._timed = cycle

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                return  # the request is in and being handled
            if not cycle.response_started:
                self.transport.write(_timeout_response(self.read_timeout_s))
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with_deadline(read_timeout_s: float, httptools: bool) -> type[asyncio.Protocol]:
    """uvicorn's h11 (or httptools) protocol class with the read deadlines of ``read_timeout_s``."""
    base: type[asyncio.Protocol]
    if httptools:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    name = f"Deadline{base.__name__}"
    return type(name, (_RequestDeadline, base), {"read_timeout_s": read_timeout_s})
