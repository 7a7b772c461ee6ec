"""The async half of a completion request: validate, admit, then stream (SSE) or collect the answer.

Parsing a body and preparing its prompt (chat template, tokenizer) cost time in proportion to the body. For
small bodies that is well under a millisecond and runs on the event loop; bigger ones go to a thread
(:class:`Offload`), so the loop keeps answering ``/healthz`` and streams while a large prompt is prepared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agent.runtime.base import GenParams, Prompt
from agent.serving import schemas
from agent.serving.errors import QueueFull, RequestCancelled, error_body, response_for
from agent.serving.generation import EventChannel, Generation, Outcome, ResultChannel
from agent.serving.model_slot import Lease
from agent.serving.service import Serving
from shared.errors import SlmopsError

log = logging.getLogger(__name__)

Body = schemas.ChatCompletionRequest | schemas.CompletionRequest
T = TypeVar("T")


class Offload:
    """Runs body-sized work inline for bodies up to ``inline_bytes``, else on a thread, one at a time.

    One thread: the JSON parser, the chat template and the tokenizer hold the GIL while they run, so more
    threads would not finish sooner, only give the event loop more rivals for the GIL. The threshold: parsing
    and tokenizing a 16 KiB chat body takes ~0.75 ms (1 KiB: ~0.13 ms; tiny model, 2-core VM), a pause the loop
    can afford, while the hop to a thread and back costs ~0.12 ms that the usual few-KiB request need not pay.
    """

    def __init__(self, inline_bytes: int = 16 * 1024) -> None:
        self.inline_bytes = inline_bytes
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        if size <= self.inline_bytes:
            return fn(*args)
        # not abandoned on cancel: a cancelled request still waits for its thread before it releases the model
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def handle_completion(serving: Serving, request: Request, body: Body, offload: Offload, size: int) -> Response:
    arrival = time.perf_counter()
    chat = isinstance(body, schemas.ChatCompletionRequest)
    endpoint = "chat" if chat else "completions"
    try:
        gen = await _admit(serving, body, endpoint, arrival, offload, size)
    except SlmopsError as exc:
        serving.metrics.count("rejected" if isinstance(exc, QueueFull) else "invalid")
        return response_for(exc)
    serving.metrics.set_queue(serving.queue.depth, serving.queue.running)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(gen, body.model, chat, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": gen.request_id},
        )
    return await _collect(gen, request, body.model, chat)


def _prepare(serving: Serving, lease: Lease, body: Body, endpoint: str) -> tuple[Prompt, GenParams, int]:
    """The prompt, its decoding params and token count (400s for what the model cannot take)."""
    adapter = serving.resolve_model(body.model, lease.model)
    prompt = body.to_prompt()
    params, prompt_tokens = serving.build_params(
        lease.model,
        prompt,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        adapter=adapter,
        prompt_param="messages" if endpoint == "chat" else "prompt",
    )
    return prompt, params, prompt_tokens


async def _admit(
    serving: Serving, body: Body, endpoint: str, arrival: float, offload: Offload, size: int
) -> Generation:
    lease = serving.slot.lease()
    try:
        prompt, params, prompt_tokens = await offload.run(size, _prepare, serving, lease, body, endpoint)
        loop = asyncio.get_running_loop()
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        interval = serving.config.stream_interval_ms / 1000.0
        channel = EventChannel(loop, interval) if body.stream else ResultChannel(loop)
        gen = Generation(
            request_id=prefix + uuid.uuid4().hex[:24],
            endpoint=endpoint,
            stream=body.stream,
            lease=lease,
            prompt=prompt,
            params=params,
            stops=body.stop_list(),
            prompt_tokens=prompt_tokens,
            channel=channel,
            arrival=arrival,
            on_finish=serving.finish,
        )
        serving.queue.submit(gen.job())
    except BaseException:
        lease.release()
        raise
    return gen  # the job owns the lease from here on


def _fingerprint(gen: Generation) -> str:
    return f"slmops-{gen.lease.version or 'dev'}"


async def _collect(gen: Generation, request: Request, model: str, chat: bool) -> Response:
    """Wait for the whole answer; a client that disconnects meanwhile cancels the generation."""
    assert isinstance(gen.channel, ResultChannel)
    result = gen.channel.future
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait((result, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not result.done():
            log.info("client left; cancelling %s", gen.request_id)
            return response_for(RequestCancelled("the client disconnected"))
        kind, value = result.result()
        if kind == "done":
            return _full_response(gen, value, model, chat)
        return _error_response(value)
    finally:
        if not result.done():  # client gone or this task cancelled: stop the generation
            gen.cancel.set()
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _full_response(gen: Generation, out: Outcome, model: str, chat: bool) -> JSONResponse:
    build = schemas.chat_completion if chat else schemas.text_completion
    payload = build(
        gen.request_id, model, out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens, _fingerprint(gen)
    )
    return JSONResponse(payload, headers={"X-Request-Id": gen.request_id})


def _error_response(exc: BaseException) -> Response:
    if isinstance(exc, SlmopsError):
        return response_for(exc)
    return JSONResponse(error_body(f"generation failed: {exc}", "server_error"), status_code=500)


async def _stream(gen: Generation, model: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    fp = _fingerprint(gen)
    cid = gen.request_id

    def chunk(text: str, finish: str | None = None) -> str:
        if chat:
            delta = {"content": text} if text or finish is None else {}
            return _sse(schemas.chat_chunk(cid, created, model, delta, finish, fp))
        return _sse(schemas.text_chunk(cid, created, model, text, finish, fp))

    channel = gen.channel
    assert isinstance(channel, EventChannel)
    try:
        if chat:
            yield _sse(schemas.chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, None, fp))
        while True:
            batch = await channel.get_batch()
            text = "".join(v for k, v in batch if k == "delta")
            out = chunk(text) if text else ""
            for kind, value in batch:
                if kind == "done":
                    out += chunk("", value.finish_reason)
                    if include_usage:
                        obj = "chat.completion.chunk" if chat else "text_completion"
                        out += _sse(
                            schemas.usage_chunk(cid, created, model, obj, value.prompt_tokens, value.completion_tokens)
                        )
                    yield out + "data: [DONE]\n\n"
                    return
                if kind == "error":
                    exc = value
                    message = exc.message if isinstance(exc, SlmopsError) else f"generation failed: {exc}"
                    yield out + _sse(error_body(message, "server_error")) + "data: [DONE]\n\n"
                    return
            if out:
                yield out
    finally:
        # Normal end: a no-op. Client gone (the response task is cancelled): stop the generation.
        gen.cancel.set()
