"""The agent's OpenAI-compatible HTTP API (FastAPI).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` -> server-sent events),
``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz`` (process up), ``GET /readyz`` (model loaded and the
last health check passed), ``GET /metrics`` (Prometheus). With an API key configured, ``/v1/*`` needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from agent.serving import schemas
from agent.serving.errors import InvalidApiKey, error_response, response_for
from agent.serving.handlers import Body, handle_completion
from agent.serving.metrics import CONTENT_TYPE
from agent.serving.service import Serving
from shared.errors import SlmopsError

log = logging.getLogger(__name__)


def _param_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def create_app(serving: Serving) -> FastAPI:
    app = FastAPI(title="slmops agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = serving
    key = serving.config.api_key

    async def require_key(request: Request) -> None:
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            serving.metrics.count("unauthorized")
            raise InvalidApiKey()

    @app.exception_handler(SlmopsError)
    async def _project_error(_: Request, exc: SlmopsError) -> Response:
        return response_for(exc)

    def invalid_body(errors: Sequence[Any]) -> Response:
        serving.metrics.count("invalid")
        first = errors[0] if errors else {"loc": (), "msg": "invalid request body"}
        param = _param_of(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_response(400, f"Invalid value for '{param}': {msg}", "invalid_request_error", param)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> Response:
        return invalid_body(exc.errors())

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in the serving API")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

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
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        serving.metrics.set_queue(serving.queue.depth, serving.queue.running)
        return Response(serving.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": i, "object": "model", "created": now, "owned_by": "slmops"} for i in serving.served_ids()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_key)])
    async def model(model_id: str) -> Response:
        if model_id not in serving.served_ids():
            return error_response(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", "model", "model_not_found"
            )
        return JSONResponse({"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "slmops"})

    # The completion routes are plain Starlette routes: the body is validated straight from its JSON bytes
    # (pydantic's JSON mode) without FastAPI's dependency and body machinery on every request.
    async def completion(request: Request, schema: type[Body]) -> Response:
        await require_key(request)
        try:
            body = schema.model_validate_json(await request.body())
        except ValidationError as exc:
            return invalid_body(exc.errors(include_url=False))
        return await handle_completion(serving, request, body)

    async def chat_completions(request: Request) -> Response:
        return await completion(request, schemas.ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await completion(request, schemas.CompletionRequest)

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])

    @app.post("/v1/feedback", dependencies=[Depends(require_key)])
    async def feedback(body: schemas.FeedbackRequest) -> dict[str, Any]:
        event = serving.feedback(body.id, body.positive)
        return {"ok": True, **event}

    return app
