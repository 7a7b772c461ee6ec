"""One request's generation: runs on a worker thread, streams events to the event loop, writes its record.

:class:`EventChannel` carries events from the worker thread to a streaming request's coroutine; it wakes the
event loop at most once per batch, so a fast generator does not flood the loop with wake-ups. A non-streaming
request gets a :class:`ResultChannel`: nothing crosses per token, one wake-up with the final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.runtime.base import GenParams, Prompt
from agent.serving.model_slot import Lease
from agent.serving.queue import Job
from agent.serving.records import RequestRecord

log = logging.getLogger(__name__)


class EventChannel:
    """Worker thread -> asyncio: ``put`` from any thread, ``get_batch`` in the loop.

    ``min_interval_s``: None wakes the loop only for the final event (non-streaming requests); 0 wakes it for
    every event; > 0 wakes it at most that often (the first event and the final one at once), so a fast model
    streams a few tokens per chunk instead of paying the loop, the socket and the client once per token.

    ``handoff_s`` > 0: after waking the loop, the producer waits (GIL released) until the consumer has sent the
    batch and awaits the next one, at most that long: in ``put`` for the first chunk, else at its next
    ``settle()`` (one token later, so the loop's own wake-up overlaps that token). onnxruntime-genai holds the
    GIL while it computes a token and the worker never gives it up by itself, so without this the loop gets it
    only by CPython's forced switch (``sys.getswitchinterval()``, 5 ms) and loses it again at each system call
    on the way to the socket. On an idle 2-core VM both ways stream alike; with another process busy on one
    core, wake-ups took 20 ms (median) to 72 ms (p90) to reach the loop without the hand-off, ~0.7 ms with it.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, min_interval_s: float | None = 0.0, handoff_s: float = 0.0
    ) -> None:
        self._loop = loop
        self._interval = min_interval_s
        self._handoff = handoff_s
        self._caught_up = threading.Event()  # the consumer awaits its next batch (cleared when a wake is sent)
        self.handoff_due = False  # a wake-up was sent; the producer's next settle() waits for the consumer
        self._items: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._waiting = False  # the consumer awaits the event
        self._scheduled = False  # a wake-up is on its way to the loop
        self._last_wake = 0.0
        self._event = asyncio.Event()

    def put(self, kind: str, value: Any = None, *, final: bool = False) -> None:
        first = True
        with self._lock:
            self._items.append((kind, value))
            if not self._waiting or self._scheduled:
                return
            if not final:
                if self._interval is None:
                    return
                now = time.perf_counter()
                if now - self._last_wake < self._interval:
                    return
                first = self._last_wake == 0.0
                self._last_wake = now
            self._scheduled = True
            self._caught_up.clear()
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping
            self._loop.call_soon_threadsafe(self._wake)
        if self._handoff and not final:
            if first:  # the first chunk: at once (time to first token)
                self._caught_up.wait(self._handoff)
            else:  # later ones at the producer's next settle(): the loop wakes up while the next token computes
                self.handoff_due = True

    def settle(self) -> None:
        """Between tokens: give the loop the GIL for the chunk the last ``put`` woke it for (see ``handoff_s``)."""
        if self.handoff_due:
            self.handoff_due = False
            self._caught_up.wait(self._handoff)

    def _wake(self) -> None:
        with self._lock:
            self._scheduled = False
        self._event.set()

    async def get_batch(self) -> list[tuple[str, Any]]:
        while True:
            with self._lock:
                if self._items:
                    out = list(self._items)
                    self._items.clear()
                    return out
                self._waiting = True
                self._event.clear()
                self._caught_up.set()
            try:
                await self._event.wait()
            finally:
                with self._lock:
                    self._waiting = False


class ResultChannel:
    """Worker thread -> asyncio for a non-streaming request: only the final event crosses, as ``future``'s result.

    Same ``put`` as :class:`EventChannel` (deltas are dropped); ``future`` resolves to ``(kind, value)``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.future: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def put(self, kind: str, value: Any = None, *, final: bool = False) -> None:
        if not final:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping
            self._loop.call_soon_threadsafe(self._resolve, (kind, value))

    def _resolve(self, item: tuple[str, Any]) -> None:
        if not self.future.done():  # the request's coroutine may have been cancelled meanwhile
            self.future.set_result(item)


class StopMatcher:
    """Cuts the output at the first stop sequence; holds back text that could be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buf = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self._buf += text
        cut = min((i for i in (self._buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self._buf = self._buf[:cut], ""
            return out
        if len(self._buf) <= self._hold:
            return ""
        out, self._buf = self._buf[: len(self._buf) - self._hold], self._buf[len(self._buf) - self._hold :]
        return out

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


@dataclass
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cancelled: bool
    # OpenAI logprobs content entries when the client asked for logprobs
    logprobs: list[dict[str, Any]] | None = None


def logprob_entry(ev: Any) -> dict[str, Any]:
    """The OpenAI ``logprobs.content`` entry of a one-token event."""
    tops = (ev.top_logprobs or [[]])[0]
    return {
        "token": ev.text,
        "logprob": ev.logprobs[0],
        "bytes": list(ev.text.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in tops],
    }


def _settling(events: Iterator[Any], channel: EventChannel) -> Iterator[Any]:
    """``events``, handing the GIL to the loop between them when a chunk waits (``EventChannel.settle``)."""
    for ev in events:
        channel.settle()  # returns at once unless a chunk waits
        yield ev


class _Tally:
    """What a generation's events said so far: token timing and count, finish reason, prompt NLL and size."""

    __slots__ = ("entropies", "finish", "first_at", "last_at", "logprobs", "nll", "prompt_tokens", "tokens")

    def __init__(self, prompt_tokens: int) -> None:
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.tokens = 0
        self.finish = "length"
        self.nll: float | None = None
        self.prompt_tokens = prompt_tokens
        self.logprobs: list[float] | None = None
        self.entropies: list[float] | None = None

    def add(self, ev: Any) -> None:
        if ev.logprobs:
            if self.logprobs is None:
                self.logprobs, self.entropies = [], []
            self.logprobs.extend(ev.logprobs)
            self.entropies.extend(ev.entropies or ())  # type: ignore[union-attr]
        if ev.token_count:
            self.last_at = time.perf_counter()
            if self.first_at is None:
                self.first_at = self.last_at
            self.tokens += ev.token_count
        if ev.finish_reason is not None:
            self.finish, self.nll = ev.finish_reason, ev.prompt_nll
            self.prompt_tokens = ev.prompt_tokens or self.prompt_tokens


class Generation:
    """The worker-side half of a request. Owns ``lease`` and releases it exactly once."""

    def __init__(
        self,
        *,
        request_id: str,
        endpoint: str,
        stream: bool,
        lease: Lease,
        prompt: Prompt,
        params: GenParams,
        stops: list[str],
        prompt_tokens: int,
        channel: EventChannel | ResultChannel,
        arrival: float,
        on_finish: Callable[[RequestRecord], None],
    ) -> None:
        self.request_id, self.endpoint, self.stream = request_id, endpoint, stream
        self.lease, self.prompt, self.params = lease, prompt, params
        self.stops, self.prompt_tokens = stops, prompt_tokens
        self.channel, self.arrival, self.on_finish = channel, arrival, on_finish
        self.cancel = threading.Event()
        self.stop_hit = False
        # the client asked for logprobs: OpenAI entries per token
        self.logprob_entries: list[dict[str, Any]] | None = [] if params.logprobs_required else None
        # tool calls: the answer is parsed at the end, so nothing streams per token
        self.functions: dict[str, Any] | None = None

    @property
    def hold_output(self) -> bool:
        """With tools the answer is parsed whole (call or text) before anything is sent."""
        return self.functions is not None

    def job(self) -> Job:
        return Job(run=self.run, cancel=self.cancel, on_skip=self.skipped)

    def skipped(self, job: Job) -> None:
        """The client left while the request waited: no generation, a cancelled record."""
        try:
            self._record(job, "", None, None, 0, "cancelled", None, error_type=None, cancelled=True)
            self._answer(job, "done", Outcome("", "cancelled", self.prompt_tokens, 0, True))
        finally:
            self.lease.release()

    def _answer(self, job: Job, kind: str, value: Any) -> None:
        """The final event goes out once the queue has counted this worker free (see ``Job.then``)."""
        job.then = functools.partial(self.channel.put, kind, value, final=True)

    def run(self, job: Job) -> None:
        matcher = StopMatcher(self.stops) if self.stops else None
        # Non-streaming requests send nothing per token: the answer crosses to the event loop once, at the end.
        send = self.channel.put if self.stream and not self.hold_output else None
        entries = self.logprob_entries
        pieces: list[str] = []
        append = pieces.append
        tally = _Tally(self.prompt_tokens)
        try:
            for ev in self._events(send is not None):
                tally.add(ev)
                if entries is not None and ev.logprobs and not self.stop_hit:
                    entries.append(logprob_entry(ev))
                    if send is not None:
                        send("logprobs", entries[-1])
                text = ev.text
                if text and matcher is not None:
                    text = self._before_stop(matcher, text)
                if not text:
                    continue
                append(text)
                if send is not None:
                    send("delta", text)
            if matcher is not None and not matcher.hit and (tail := matcher.flush()):
                append(tail)
                if send is not None:
                    send("delta", tail)
            self._finish(job, "".join(pieces), tally)
        except Exception as exc:
            log.warning("request %s failed: %s", self.request_id, exc, exc_info=not hasattr(exc, "code"))
            t, text = tally, "".join(pieces)
            self._record(
                job, text, t.first_at, t.last_at, t.tokens, None, None, type(exc).__name__, False, t.prompt_tokens, t
            )
            self._answer(job, "error", exc)
        finally:
            self.lease.release()

    def _events(self, streaming: bool) -> Iterator[Any]:
        events = self.lease.model.generate(self.prompt, self.params, self.cancel)
        if streaming and isinstance(self.channel, EventChannel):
            return _settling(events, self.channel)
        return events

    def _before_stop(self, matcher: StopMatcher, text: str) -> str:
        """The part of ``text`` before a stop sequence ("" once one was hit); a hit cancels the generation."""
        if matcher.hit:
            return ""
        text = matcher.feed(text)
        if matcher.hit:
            self.stop_hit = True
            self.cancel.set()
        return text

    def _finish(self, job: Job, text: str, t: _Tally) -> None:
        cancelled = t.finish == "cancelled" and not self.stop_hit
        finish = "stop" if self.stop_hit else t.finish
        # the record first: once the client has its answer, telemetry and feedback ids are in place
        self._record(job, text, t.first_at, t.last_at, t.tokens, finish, t.nll, None, cancelled, t.prompt_tokens, t)
        outcome = Outcome(text, finish, t.prompt_tokens, t.tokens, cancelled, self.logprob_entries)
        self._answer(job, "done", outcome)

    def _record(
        self,
        job: Job,
        text: str,
        first_at: float | None,
        last_at: float | None,
        tokens: int,
        finish: str | None,
        nll: float | None,
        error_type: str | None,
        cancelled: bool,
        prompt_tokens: int | None = None,
        tally: _Tally | None = None,
    ) -> None:
        end = time.perf_counter()
        itl = None
        if first_at is not None and last_at is not None and tokens > 1:
            itl = (last_at - first_at) * 1000.0 / (tokens - 1)
        handle = self.lease.handle
        rec = RequestRecord(
            request_id=self.request_id,
            model_id=handle.model.model_id,
            version=handle.version,
            adapter=self.params.adapter,
            endpoint=self.endpoint,
            stream=self.stream,
            queue_wait_ms=job.queue_wait_s * 1000.0,
            ttft_ms=(first_at - self.arrival) * 1000.0 if first_at is not None else None,
            itl_ms=itl,
            total_ms=(end - self.arrival) * 1000.0,
            prompt_tokens=prompt_tokens if prompt_tokens is not None else self.prompt_tokens,
            completion_tokens=tokens,
            error=error_type is not None,
            cancelled=cancelled,
            prompt_nll=nll,
            output_text=text,
            prompt_text=self.prompt.user_text(),
            finish_reason=finish,
            error_type=error_type,
            started_unix=time.time() - (end - self.arrival),
            token_logprobs=tally.logprobs if tally is not None else None,
            token_entropies=tally.entropies if tally is not None else None,
        )
        try:
            self.on_finish(rec)
        except Exception:
            log.exception("the request-record callback failed for %s", self.request_id)
