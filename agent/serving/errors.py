"""OpenAI-style error bodies and the narrow errors serving raises.

Every error response has the body ``{"error": {"message", "type", "param", "code"}}`` that the ``openai``
client parses into its exception classes (BadRequestError, AuthenticationError, RateLimitError, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from shared.errors import (
    Cancelled,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    ResourceExhausted,
    SlmopsError,
    Unauthenticated,
    Unavailable,
)

# gRPC-style codes of shared.errors -> (HTTP status, OpenAI error type)
_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable_error"),
    "CANCELLED": (499, "cancelled"),
}


class RequestFieldError(InvalidArgument):
    """A request field is invalid; ``param`` names it (OpenAI's ``error.param``)."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        self.param, self.error_code = param, code
        super().__init__(message)


class ContextLengthExceeded(RequestFieldError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(param, message, code="context_length_exceeded")


class ModelNotFound(NotFound):
    def __init__(self, requested: str, served: list[str]) -> None:
        self.param, self.error_code = "model", "model_not_found"
        super().__init__(
            f"The model '{requested}' does not exist on this agent; served ids: {', '.join(served) or 'none'}"
        )


class QueueFull(ResourceExhausted):
    """All workers are busy and the wait queue is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        self.depth, self.retry_after_s = depth, retry_after_s
        self.error_code = "queue_full"
        super().__init__(
            f"the agent is at capacity ({depth} requests queued or running); retry after {retry_after_s} s"
        )


class NoModelLoaded(Unavailable):
    def __init__(self) -> None:
        self.error_code = "model_not_loaded"
        super().__init__("no model is loaded on this agent yet; retry once /readyz answers 200")


class InvalidApiKey(Unauthenticated):
    def __init__(self) -> None:
        self.error_code = "invalid_api_key"
        super().__init__("missing or wrong API key: send 'Authorization: Bearer <key>' as configured on the agent")


class RequestCancelled(Cancelled):
    pass


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def response_for(exc: SlmopsError) -> JSONResponse:
    """The HTTP response for a project error (by its gRPC-style code)."""
    status, type_ = _STATUS.get(exc.code, (500, "server_error"))
    if isinstance(exc, ModelLoadError):
        status, type_ = 503, "service_unavailable_error"
    resp = error_response(status, exc.message, type_, getattr(exc, "param", None), getattr(exc, "error_code", None))
    if isinstance(exc, QueueFull):
        resp.headers["Retry-After"] = str(exc.retry_after_s)
    return resp
