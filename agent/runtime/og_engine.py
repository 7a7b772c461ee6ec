"""Continuous batching on onnxruntime-genai's ``og.Engine``: one scheduler thread steps every active request.

Each :meth:`EngineBatcher.generate` call hands its prompt to the scheduler thread and reads token events from
its own queue; the scheduler owns the engine (every ``og.Engine``/``og.Request`` call happens on it), starts new
turns between steps, cancels turns whose ``cancel`` event is set, and routes each step's events to the request
queues. On CPU the folder's engine is the static-batch scheduler (``engine.static_batching.max_batch_size``):
it batches decoding across up to 4 requests per step (onnxruntime-genai's constant, whatever
``max_batch_size`` says) and starts new ones only when the running batch has ended (docs/serving.md, "Continuous
batching"); it takes guidance, temperature, top-p/k and token limits per turn, but not
a per-turn seed (that needs ``engine.dynamic_batching`` with a paged KV cache); seeded sampling, adapters and
logits (logprobs) stay on the per-request generator path (see :meth:`EngineBatcher.can_serve`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from agent.runtime.base import GenParams, TokenEvent
from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

# How long a request's reader waits between reads of its queue while the engine is batching.
CONSUMER_WAIT_S = 0.002
_FINISH = {"EOS": "stop", "STOP_STRING": "stop", "MAX_GENERATED_TOKENS": "length", "MAX_SESSION_TOKENS": "length"}


class _Turn:
    __slots__ = ("cancel", "ids", "out", "params", "request", "turn_id")

    def __init__(self, ids: np.ndarray, params: GenParams, cancel: threading.Event) -> None:
        self.ids, self.params, self.cancel = ids, params, cancel
        self.out: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.request: Any = None
        self.turn_id = 0


class EngineBatcher:
    """Batches concurrent generations of one ``og.Model`` through ``og.Engine``."""

    def __init__(self, og: Any, model: Any, tokenizer: Any, eos: set[int], context_length: int) -> None:
        self._og, self._tokenizer, self._eos, self._ctx = og, tokenizer, frozenset(eos), context_length
        self._engine: Any = None
        self._buffer: Any = None
        self.max_batch = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._new: queue.SimpleQueue[_Turn | None] = queue.SimpleQueue()
        self._active: dict[int, _Turn] = {}  # id(og.Request) -> turn
        self._wake = threading.Event()
        self._stopped = False
        self.in_flight = 0
        # og.Engine is bound to the thread that creates it: the scheduler thread creates and drives it.
        self._thread = threading.Thread(target=self._loop, args=(model,), name="og-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    @staticmethod
    def can_serve(params: GenParams) -> bool:
        """What the static-batch engine cannot do goes to the generator path."""
        seeded_sampling = params.seed is not None and not params.greedy
        return not (seeded_sampling or params.adapter or params.logprobs_required or params.top_logprobs)

    def generate(self, ids: np.ndarray, params: GenParams, cancel: threading.Event) -> Iterator[TokenEvent]:
        turn = _Turn(ids, params, cancel)
        self.in_flight += 1
        try:
            self._new.put(turn)
            self._wake.set()
            decode = self._tokenizer.create_stream().decode
            get, drain = turn.out.get, turn.out.get_nowait
            while True:
                items = [get()]  # then whatever else arrived meanwhile, without blocking again
                with contextlib.suppress(queue.Empty):
                    while True:
                        items.append(drain())
                for kind, value in items:
                    if kind == "token":
                        yield TokenEvent(decode(value))
                    elif kind == "error":
                        raise value
                    else:
                        yield TokenEvent("", token_count=0, finish_reason=value, prompt_tokens=len(ids))
                        return
                if self.in_flight > 1:
                    # Several requests share each engine step: reading every CONSUMER_WAIT_S instead of every
                    # token saves a thread wake-up (and a GIL hand-off) per token per request.
                    time.sleep(CONSUMER_WAIT_S)
        finally:
            self.in_flight -= 1
            cancel.set()  # a consumer that stopped reading: the scheduler ends the turn
            self._wake.set()

    def close(self) -> None:
        self._stopped = True
        self._new.put(None)
        self._wake.set()
        self._thread.join(5.0)

    # --- scheduler thread -----------------------------------------------------------------------------------
    def _start(self, turn: _Turn) -> None:
        og, p = self._og, turn.params
        try:
            request = self._engine.create_request()
            options = og.TurnOptions(request)
            budget = min(p.max_new_tokens, self._ctx - len(turn.ids))
            options.set_max_generated_tokens(budget)
            if p.ignore_eos:
                options.set_min_generated_tokens(budget)
            options.set_do_sample(not p.greedy)
            options.set_temperature(0.0 if p.greedy else p.temperature)
            if not p.greedy:
                options.set_top_p(p.top_p)
                options.set_top_k(p.top_k)
            if p.guidance is not None:
                options.set_guidance(*p.guidance)
            turn.turn_id = request.begin_turn(turn.ids, options)
        except Exception as exc:
            turn.out.put(("error", InvalidArgument(f"the batching engine refused the request: {exc}")))
            return
        turn.request = request
        self._active[id(request)] = turn

    def _open(self, model: Any) -> bool:
        try:
            self._engine = self._og.Engine(model)
            self.max_batch = int(self._engine.get_capabilities().configured_max_batch_size)
            self._buffer = self._engine.create_event_buffer(max(64, 4 * self.max_batch))
        except Exception as exc:
            self._error = exc
        self._ready.set()
        return self._error is None

    def _loop(self, model: Any) -> None:
        if not self._open(model):
            return
        while not self._stopped:
            while True:
                try:
                    turn = self._new.get_nowait()
                except queue.Empty:
                    break
                if turn is not None:
                    self._start(turn)
            if not self._active:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._cancel_left()
            try:
                self._engine.run(self._buffer)
            except Exception as exc:
                log.exception("og.Engine.run failed; failing %d requests", len(self._active))
                for turn in self._active.values():
                    turn.out.put(("error", exc))
                self._active.clear()
                continue
            self._dispatch()
        self._engine = None

    def _cancel_left(self) -> None:
        for turn in list(self._active.values()):
            if turn.cancel.is_set():
                turn.request.cancel_turn(turn.turn_id)

    def _dispatch(self) -> None:
        flags = self._og.EngineEventFlags
        buf = self._buffer
        for i in range(len(buf)):
            ev = buf[i]
            turn = self._active.get(id(ev.request))
            if turn is None:
                continue
            f = int(ev.flags)
            if f & int(flags.TOKEN) and ev.token is not None and int(ev.token) not in self._eos:
                turn.out.put(("token", int(ev.token)))
            if f & int(flags.FAILED):
                turn.out.put(("error", RuntimeError(f"og.Engine failed the request: {ev.error_code}")))
                self._end(turn)
            elif f & int(flags.TURN_FINISHED):
                reason = ev.finish_reason.name
                turn.out.put(("done", "cancelled" if reason == "CANCELLED" else _FINISH.get(reason, "stop")))
                self._end(turn)

    def _end(self, turn: _Turn) -> None:
        self._active.pop(id(turn.request), None)
        try:
            turn.request.close()
        except Exception:  # pragma: no cover - a closed engine
            log.debug("closing an engine request failed", exc_info=True)
