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
from dataclasses import replace
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agent.runtime.base import CapabilityNotSupported, GenParams, LoadedModel, Prompt
from agent.serving import guidance, schemas, tools
from agent.serving.errors import QueueFull, RequestCancelled, RequestFieldError, error_body, response_for
from agent.serving.generation import EventChannel, Generation, Outcome, ResultChannel
from agent.serving.model_slot import Lease
from agent.serving.service import Serving
from shared.errors import InvalidArgument, SlmopsError

log = logging.getLogger(__name__)

Body = schemas.ChatCompletionRequest | schemas.CompletionRequest
T = TypeVar("T")
# Longest a worker waits for the event loop to send a streamed chunk (EventChannel handoff_s): far above the
# ~0.2 ms the loop needs when free, and a bounded cost (<= 1/25 of the 50 ms default interval) when it is busy.
_HANDOFF_S = 0.002
# Most tokens per runtime event for a request that checks no token by itself (no stop sequences, no logprobs
# asked): the worker's per-token Python is then the runtime's decode loop alone (agent/runtime/og_loop.py); a
# streamed request's events still come at least every stream_interval_ms.
EVENT_TOKENS = 32


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


class Plan:
    """What a request asks of decoding besides its sampling settings: guidance, tools, logprobs."""

    def __init__(self) -> None:
        self.guidance: tuple[str, str] | None = None
        self.functions: dict[str, Any] | None = None
        self.tools_prompt: str | None = None
        self.logprobs = False
        self.top_logprobs = 0


def _check_guidance(model: LoadedModel, field: str, spec: tuple[str, str]) -> None:
    """400 naming ``field`` when the backend cannot enforce ``spec`` (never silently unguided)."""
    try:
        model.check_guidance(*spec)
    except CapabilityNotSupported as exc:
        raise RequestFieldError(field, exc.message, code="unsupported") from exc
    except InvalidArgument as exc:
        raise RequestFieldError(field, exc.message, code="unsupported_schema") from exc


def _chat_plan(serving: Serving, model: LoadedModel, body: schemas.ChatCompletionRequest) -> Plan:
    plan = Plan()
    found: tuple[str, tuple[str, str] | None] | None = None
    if body.tools:
        mode, functions = tools.chosen(body.tools, body.tool_choice)
        if mode != "none":
            plan.functions, plan.tools_prompt = functions, tools.system_prompt(functions)
            found = ("tools", tools.guidance(mode, functions, body.parallel_tool_calls is not False))
    elif body.tool_choice not in (None, "none", "auto"):
        raise RequestFieldError("tool_choice", "tool_choice asks for a tool call but the request has no tools")
    own = guidance.request_spec(body.response_format, body.guided_json, body.guided_regex, body.guided_grammar)
    if own is not None and found is not None:
        raise RequestFieldError(own[0], f"{own[0]} cannot be combined with tools; send one or the other")
    found = found or own
    explicit_text = (body.response_format or {}).get("type") == "text"
    if found is None and serving.config.enforce_schema and serving.config.output_schema and not explicit_text:
        found = ("output_schema", guidance.schema_spec(serving.config.output_schema))
    if found is not None and found[1] is not None:
        _check_guidance(model, found[0], found[1])
        plan.guidance = found[1]
    if body.logprobs:
        if model.runtime_name == "foundry-local":
            raise RequestFieldError("logprobs", "logprobs are not supported by the foundry-local runtime")
        plan.logprobs, plan.top_logprobs = True, body.top_logprobs or 0
    return plan


def _prepare(serving: Serving, lease: Lease, body: Body, endpoint: str) -> tuple[Prompt, GenParams, int, Plan]:
    """The prompt, its decoding params, token count and plan (400s for what the model cannot take)."""
    adapter = serving.resolve_model(body.model, lease.model)
    if isinstance(body, schemas.ChatCompletionRequest):
        plan = _chat_plan(serving, lease.model, body)
        prompt = body.to_prompt(plan.tools_prompt)
    else:
        plan, prompt = Plan(), body.to_prompt()
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
        guidance=plan.guidance,
        logprobs=plan.logprobs,
        top_logprobs=plan.top_logprobs,
    )
    return prompt, params, prompt_tokens, plan


async def _admit(
    serving: Serving, body: Body, endpoint: str, arrival: float, offload: Offload, size: int
) -> Generation:
    lease = serving.slot.lease()
    try:
        prompt, params, prompt_tokens, plan = await offload.run(size, _prepare, serving, lease, body, endpoint)
        loop = asyncio.get_running_loop()
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        interval = serving.config.stream_interval_ms / 1000.0
        stops = body.stop_list()
        if not stops and not params.logprobs_required:  # nothing to check per token: tokens come in batches
            params = replace(params, event_tokens=EVENT_TOKENS, event_interval_s=interval if body.stream else None)
        # the GIL hand-off per chunk (see EventChannel); not per token (interval 0): that would pay it per token
        handoff = _HANDOFF_S if interval > 0 else 0.0
        channel = EventChannel(loop, interval, handoff) if body.stream else ResultChannel(loop)
        gen = Generation(
            request_id=prefix + uuid.uuid4().hex[:24],
            endpoint=endpoint,
            stream=body.stream,
            lease=lease,
            prompt=prompt,
            params=params,
            stops=stops,
            prompt_tokens=prompt_tokens,
            channel=channel,
            arrival=arrival,
            on_finish=serving.finish,
        )
        gen.functions = plan.functions
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


def _tool_calls(gen: Generation, out: Outcome) -> list[dict[str, Any]] | None:
    if gen.functions is None or out.finish_reason == "cancelled":
        return None
    return tools.parse_calls(out.text, gen.functions)


def _full_response(gen: Generation, out: Outcome, model: str, chat: bool) -> JSONResponse:
    args = (gen.request_id, model, out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens)
    if not chat:
        payload = schemas.text_completion(*args, _fingerprint(gen))
    else:
        calls = _tool_calls(gen, out)
        if calls:
            args = (*args[:3], "tool_calls", *args[4:])
        payload = schemas.chat_completion(*args, _fingerprint(gen), tool_calls=calls, logprobs=out.logprobs)
    return JSONResponse(payload, headers={"X-Request-Id": gen.request_id})


def _held_chunks(gen: Generation, out: Outcome, chunk: Callable[..., str]) -> tuple[str, str]:
    """A tool-call request's answer, sent at the end: tool_calls deltas or the text; and its finish reason."""
    calls = _tool_calls(gen, out)
    if not calls:
        return (chunk(out.text) if out.text else ""), out.finish_reason
    deltas = [{"index": i, **call} for i, call in enumerate(calls)]
    return chunk(None, None, {"tool_calls": deltas}), "tool_calls"


def _error_response(exc: BaseException) -> Response:
    if isinstance(exc, SlmopsError):
        return response_for(exc)
    return JSONResponse(error_body(f"generation failed: {exc}", "server_error"), status_code=500)


class _Chunks:
    """The SSE chunks of one streamed answer.

    A plain text delta (the usual chunk) is its template with the JSON-escaped text in place, not a fresh dict
    through ``json.dumps``: the same bytes in 0.3 us instead of 4.5 us of the event loop's time (which it takes
    from the worker generating the next tokens: one GIL).
    """

    _MARK = "\x00slmops-delta\x00"

    def __init__(self, gen: Generation, model: str, chat: bool, include_usage: bool) -> None:
        self.gen, self.model, self.chat, self.include_usage = gen, model, chat, include_usage
        self.created, self.fp, self.cid = int(time.time()), _fingerprint(gen), gen.request_id
        self._head, self._tail = self.chunk(self._MARK).split(json.dumps(self._MARK), 1)

    def first(self) -> str:
        delta = {"role": "assistant", "content": ""}
        return _sse(schemas.chat_chunk(self.cid, self.created, self.model, delta, None, self.fp))

    def text(self, text: str) -> str:
        """The chunk of a text delta (no logprobs, no finish reason): as ``chunk(text)``, byte for byte."""
        return self._head + json.dumps(text) + self._tail

    def chunk(
        self, text: str | None, finish: str | None = None, delta: dict[str, Any] | None = None, lps: Any = None
    ) -> str:
        if self.chat:
            if delta is None:
                delta = {"content": text} if text or finish is None else {}
            return _sse(schemas.chat_chunk(self.cid, self.created, self.model, delta, finish, self.fp, lps))
        return _sse(schemas.text_chunk(self.cid, self.created, self.model, text or "", finish, self.fp))

    def batch(self, batch: list[tuple[str, Any]]) -> str:
        """The chunk of a batch's deltas and logprobs ("" when it has neither)."""
        if all(kind == "delta" for kind, _ in batch):  # the usual batch: text only
            text = "".join(v for _, v in batch)
            return self.text(text) if text else ""
        text = "".join(v for k, v in batch if k == "delta")
        lps = [v for k, v in batch if k == "logprobs"] or None
        return self.chunk(text, None, None, lps) if text or lps else ""

    def ending(self, kind: str, value: Any) -> str:
        if kind == "error":
            message = value.message if isinstance(value, SlmopsError) else f"generation failed: {value}"
            return _sse(error_body(message, "server_error"))
        out, finish = "", value.finish_reason
        if self.gen.hold_output:
            out, finish = _held_chunks(self.gen, value, self.chunk)
        out += self.chunk("", finish)
        if self.include_usage:
            obj = "chat.completion.chunk" if self.chat else "text_completion"
            usage = schemas.usage_chunk(
                self.cid, self.created, self.model, obj, value.prompt_tokens, value.completion_tokens
            )
            out += _sse(usage)
        return out


async def _stream(gen: Generation, model: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    sse = _Chunks(gen, model, chat, include_usage)
    channel = gen.channel
    assert isinstance(channel, EventChannel)
    # The role chunk goes out with the first batch, in the same write: while the worker starts (prefill), the
    # client then has no chunk to wake up for and parse, which would take a core from the model's threads.
    out = sse.first() if chat else ""
    try:
        while True:
            batch = await channel.get_batch()
            kind, value = batch[-1]  # the final event is always the last one put
            if kind in ("done", "error"):
                out += sse.batch(batch[:-1])
                yield out + sse.ending(kind, value) + "data: [DONE]\n\n"
                return
            out += sse.batch(batch)
            if out:
                yield out
                out = ""
    finally:
        # Normal end: a no-op. Client gone (the response task is cancelled): stop the generation.
        gen.cancel.set()
