"""The agent's OpenAI-compatible HTTP API (FastAPI).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` -> server-sent events),
``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz`` (process up), ``GET /readyz`` (model loaded and the
last health check passed; also the agent's standing with its controller), ``GET /metrics`` (Prometheus).
With an API key configured, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>`` (``/metrics``
can be opened with ``metrics_require_key=False``); the probes stay open. Request size and read-time limits:
:mod:`agent.serving.limits`.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from agent.serving import schemas
from agent.serving.errors import InvalidApiKey, error_response, response_for
from agent.serving.handlers import Body, Offload, handle_completion
from agent.serving.limits import BodyLimit
from agent.serving.metrics import CONTENT_TYPE
from agent.serving.service import Serving, ServingConfig
from shared.errors import SlmopsError

log = logging.getLogger(__name__)


def _param_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _metrics_need_key(config: ServingConfig) -> bool:
    if config.metrics_require_key and not config.api_key:
        log.warning("metrics_require_key is set but no api_key is: /metrics is open (set api_key to guard it)")
    return bool(config.api_key) and config.metrics_require_key is not False


def _key_check(serving: Serving) -> Callable[[Request], Awaitable[None]]:
    key = serving.config.api_key

    async def require_key(request: Request) -> None:
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            serving.metrics.count("unauthorized")
            raise InvalidApiKey()

    return require_key


def _invalid_body(serving: Serving, errors: Sequence[Any]) -> Response:
    serving.metrics.count("invalid")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request body"}
    param = _param_of(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return error_response(400, f"Invalid value for '{param}': {msg}", "invalid_request_error", param)


def create_app(serving: Serving) -> FastAPI:
    app = FastAPI(title="slmops agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = serving
    config = serving.config
    app.add_middleware(
        BodyLimit,
        max_bytes=config.max_body_bytes,
        on_reject=lambda _status: serving.metrics.count("invalid"),
    )
    require_key = _key_check(serving)

    @app.exception_handler(SlmopsError)
    async def _project_error(_: Request, exc: SlmopsError) -> Response:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _invalid_body(serving, exc.errors())

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in the serving API")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    _add_probes(app, serving, [Depends(require_key)] if _metrics_need_key(config) else [])
    _add_api(app, serving, require_key)
    return app


def _add_probes(app: FastAPI, serving: Serving, metrics_guard: list[Any]) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, message = serving.readiness()
        handle = serving.slot.current
        body = {
            "ready": ready,
            "message": message,
            "model": handle.model.model_id if handle else None,
            "version": handle.version if handle else None,
            "runtime": handle.model.info.runtime if handle else None,
            "active_provider": handle.model.active_provider if handle else None,
            "controller": dict(serving.controller_state),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=metrics_guard)
    async def metrics() -> Response:
        serving.metrics.set_queue(serving.queue.depth, serving.queue.running)
        return Response(serving.metrics.exposition(), media_type=CONTENT_TYPE)


def _add_api(app: FastAPI, serving: Serving, require_key: Callable[[Request], Awaitable[None]]) -> None:
    guard = [Depends(require_key)]
    offload = Offload()

    def card(model_id: str, now: int) -> dict[str, Any]:
        handle = serving.slot.current
        base = handle.model.model_id if handle else model_id
        out: dict[str, Any] = {"id": model_id, "object": "model", "created": now, "owned_by": "slmops"}
        out["context_length"] = handle.model.context_length if handle else None
        out["root"] = base
        out["parent"] = base if model_id != base else None
        out["kind"] = "adapter" if model_id != base else "base"
        return out

    @app.get("/v1/models", dependencies=guard)
    async def models() -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [card(i, now) for i in serving.served_ids()]}

    @app.get("/v1/models/{model_id:path}", dependencies=guard)
    async def model(model_id: str) -> Response:
        if model_id not in serving.served_ids():
            return error_response(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", "model", "model_not_found"
            )
        return JSONResponse(card(model_id, int(time.time())))

    # The completion routes are plain Starlette routes: the body is validated straight from its JSON bytes
    # (pydantic's JSON mode) without FastAPI's dependency and body machinery on every request.
    async def completion(request: Request, schema: type[Body]) -> Response:
        await require_key(request)
        raw = await request.body()  # whole and within max_body_bytes (BodyLimit)
        try:
            body = await offload.run(len(raw), schema.model_validate_json, raw)
        except ValidationError as exc:
            return _invalid_body(serving, exc.errors(include_url=False))
        return await handle_completion(serving, request, body, offload, len(raw))

    async def chat_completions(request: Request) -> Response:
        return await completion(request, schemas.ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await completion(request, schemas.CompletionRequest)

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])

    @app.post("/v1/feedback", dependencies=guard)
    async def feedback(body: schemas.FeedbackRequest) -> dict[str, Any]:
        event = serving.feedback(body.id, body.positive)
        return {"ok": True, **event}
