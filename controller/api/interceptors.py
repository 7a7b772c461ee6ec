"""The one server interceptor: authenticates each call and maps project errors to gRPC status codes.

Servicers stay thin: they raise :class:`shared.errors.SlmopsError` subclasses and never touch status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from controller.auth import AgentAuthenticator, check_admin
from shared.errors import SlmopsError

log = logging.getLogger(__name__)

RPC_LATENCY = Histogram(
    "slmops_controller_rpc_seconds",
    "Controller RPC handling time",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RPC_ERRORS = Counter("slmops_controller_rpc_errors_total", "Controller RPCs that ended in an error", ["method", "code"])

# Methods callable without credentials (they check their own token in the request).
PUBLIC_METHODS = {"/slmops.v1.AgentService/Enroll"}


def status_of(error: SlmopsError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


class _Tracked:
    """The servicer's context, remembering whether the handler aborted the call itself.

    grpc's ``context.abort`` ends a handler by raising an exception of no particular type (a bare
    ``Exception`` in the sync server); the status it set is already final. The interceptor must let that
    exception pass instead of reporting it as an unexpected error, so it tracks the call rather than
    guessing from the exception's class.
    """

    def __init__(self, context: grpc.ServicerContext, method: str) -> None:
        self._context = context
        self._method = method
        self.aborted = False

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = True
        RPC_ERRORS.labels(self._method, code.name).inc()
        self._context.abort(code, details)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.aborted = True
        RPC_ERRORS.labels(self._method, status.code.name).inc()
        self._context.abort_with_status(status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _bearer(meta: dict[str, str]) -> str:
    value = meta.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else value.strip()


class ControllerInterceptor(grpc.ServerInterceptor):
    def __init__(self, admin_token: str, agents: AgentAuthenticator) -> None:
        self.admin_token = admin_token
        self.agents = agents

    def _authorize(self, method: str, meta: dict[str, str]) -> None:
        if method in PUBLIC_METHODS:
            return
        if method.startswith("/slmops.v1.AdminService/"):
            check_admin(self.admin_token, _bearer(meta))
        elif method.startswith("/slmops.v1.AgentService/"):
            self.agents.check(meta.get("x-slmops-agent-id", ""), _bearer(meta))

    def _fail(self, method: str, context: _Tracked, exc: Exception) -> None:
        if context.aborted or isinstance(exc, grpc.RpcError):  # the handler set the status: let it stand
            raise exc
        if isinstance(exc, SlmopsError):
            code, message = status_of(exc), exc.message
        else:
            log.exception("unexpected error in %s", method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        context.abort(code, message)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        meta = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        short = method.rsplit("/", 1)[-1]

        if handler.unary_unary:
            behavior = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                tracked = _Tracked(context, short)
                try:
                    self._authorize(method, meta)
                    return behavior(request, tracked)
                except Exception as exc:
                    self._fail(short, tracked, exc)
                finally:
                    RPC_LATENCY.labels(short).observe(time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            behavior_s = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                tracked = _Tracked(context, short)
                try:
                    self._authorize(method, meta)
                    yield from behavior_s(request, tracked)
                except Exception as exc:
                    self._fail(short, tracked, exc)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
