"""The one server interceptor: authenticates each call and maps project errors to gRPC status codes.

Servicers stay thin: they raise :class:`shared.errors.SlmopsError` subclasses and never touch status codes.

Access is denied by default. A method is callable only when it is in :data:`PUBLIC_METHODS` (it checks its own
token in the request) or belongs to a service with a rule in :data:`SERVICE_ACCESS`: AdminService needs the
admin token, AgentService an enrolled agent's id and secret. Any other method that a handler is registered for
is answered UNIMPLEMENTED, exactly as gRPC answers a method that does not exist (a caller cannot probe which
handlers are there), without calling the handler; the controller logs why, once per method. All four handler
kinds (unary-unary, unary-stream, stream-unary, stream-stream) get the same checks, error mapping and metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from enum import Enum
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from controller.core.auth import AgentAuthenticator, check_admin
from shared.errors import SlmopsError

log = logging.getLogger(__name__)

RPC_LATENCY = Histogram(
    "slmops_controller_rpc_seconds",
    "Controller RPC handling time",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RPC_ERRORS = Counter("slmops_controller_rpc_errors_total", "Controller RPCs that ended in an error", ["method", "code"])


class Access(Enum):
    PUBLIC = "public"  # no credentials: the method checks a token in its request
    ADMIN = "admin"  # the admin token
    AGENT = "agent"  # an enrolled agent's id and secret
    DENIED = "denied"  # no rule: refused


# Methods callable without credentials. The standard health service (grpc.health.v1.Health) would go here if
# controller/api/server.py registered it; it does not.
PUBLIC_METHODS: frozenset[str] = frozenset({"/slmops.v1.AgentService/Enroll"})
# Services whose every other method needs credentials of one kind.
SERVICE_ACCESS: dict[str, Access] = {
    "slmops.v1.AdminService": Access.ADMIN,
    "slmops.v1.AgentService": Access.AGENT,
}
# What gRPC itself answers for a method that has no handler.
NOT_FOUND_DETAILS = "Method not found!"


def access_of(method: str, public: Collection[str] = PUBLIC_METHODS) -> Access:
    """The rule for ``method`` (``/package.Service/Method``)."""
    if method in public:
        return Access.PUBLIC
    service = method[1:].rsplit("/", 1)[0] if method.startswith("/") and method.count("/") == 2 else ""
    return SERVICE_ACCESS.get(service, Access.DENIED)


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


# handler attribute -> (factory of a handler of that kind, whether the behaviour yields its responses)
_KINDS: tuple[tuple[str, Callable[..., grpc.RpcMethodHandler], bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class _Call:
    """What the wrapper of one RPC knows: its method, rule and credentials."""

    __slots__ = ("access", "meta", "method", "short")

    def __init__(self, details: grpc.HandlerCallDetails, access: Access) -> None:
        self.method = details.method
        self.short = self.method.rsplit("/", 1)[-1]
        self.access = access
        self.meta = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


class ControllerInterceptor(grpc.ServerInterceptor):
    """``public``: the methods callable without credentials (default :data:`PUBLIC_METHODS`)."""

    def __init__(self, admin_token: str, agents: AgentAuthenticator, public: Collection[str] = PUBLIC_METHODS) -> None:
        self.admin_token = admin_token
        self.agents = agents
        self.public = frozenset(public)
        self._denied_logged: set[str] = set()
        self._lock = threading.Lock()

    def _authorize(self, call: _Call, context: _Tracked) -> None:
        if call.access is Access.ADMIN:
            check_admin(self.admin_token, _bearer(call.meta))
        elif call.access is Access.AGENT:
            self.agents.check(call.meta.get("x-slmops-agent-id", ""), _bearer(call.meta))
        elif call.access is Access.DENIED:
            self._deny(call, context)

    def _fail(self, call: _Call, context: _Tracked, exc: Exception) -> None:
        if context.aborted:  # the handler set the status: let it stand
            raise exc
        if isinstance(exc, SlmopsError):
            code, message = status_of(exc), exc.message
        else:
            log.exception("unexpected error in %s", call.method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        context.abort(code, message)

    def _deny(self, call: _Call, context: _Tracked) -> None:
        with self._lock:
            first = call.method not in self._denied_logged
            self._denied_logged.add(call.method)
        if first:
            log.warning("refused %s: the method has no access rule (controller/api/interceptors.py)", call.method)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_FOUND_DETAILS)

    def _unary(self, call: _Call, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            tracked = _Tracked(context, call.short)
            try:
                self._authorize(call, tracked)
                return behavior(request, tracked)
            except Exception as exc:
                self._fail(call, tracked, exc)
            finally:
                RPC_LATENCY.labels(call.short).observe(time.perf_counter() - start)

        return handle

    def _stream(self, call: _Call, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            tracked = _Tracked(context, call.short)
            try:
                self._authorize(call, tracked)
                yield from behavior(request, tracked)
            except Exception as exc:
                self._fail(call, tracked, exc)
            finally:
                RPC_LATENCY.labels(call.short).observe(time.perf_counter() - start)

        return handle

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        call = _Call(details, access_of(details.method, self.public))
        for kind, factory, streaming in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrapped = (self._stream if streaming else self._unary)(call, behavior)
                return factory(
                    wrapped,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return None  # a handler of no known kind: answered like an unknown method
