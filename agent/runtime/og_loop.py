"""The decode loops of one ``og.Generator`` (onnxruntime-genai's per-request path).

``generate_next_token`` holds the GIL while it computes, and whatever Python runs between two calls runs on
caches the model step has just evicted: there it costs several times its warm price (a 10-20 us busy gap per
token slowed a 1 ms step by a further ~1-2x that gap on the 2-core VM). So the loops do as little per token as
they can: bound methods in locals, no keyword arguments, no numpy, list appends only.

- :func:`per_token`: one :class:`TokenEvent` per token (a consumer that checks each token: stop sequences,
  per-token logprobs in the response).
- :func:`coalesced`: up to ``GenParams.event_tokens`` tokens per event, at most ``event_interval_s`` apart (None:
  no time limit); each token up to the first one with text comes in an event of its own (time to first token).
  The event loop, the tally and the telemetry logprobs then run once per event instead of once per token.

Both return the finish reason (``length``, ``stop`` or ``cancelled``).

:func:`cache_array_dtypes` (called when onnxruntime-genai is imported) removes the one hidden Python step of
``Generator.get_logits``: pybind11 gives each array it builds from a C++ buffer its dtype through numpy's
pure-Python PEP 3118 format parser (``_dtype_from_pep3118('f')``, ~3 us warm); per token, cold, that parser was
the telemetry logprobs' main cost (a plain og loop with ``get_logits`` per token: 3.5% slower without the cache,
0.8% with it, 40 interleaved runs of a one-off probe on the 2-core VM; see docs/serving.md).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from agent.runtime.base import TokenEvent
from agent.runtime.logprobs import Confidence

log = logging.getLogger(__name__)

Loop = Generator[TokenEvent, None, str]
# Distinct PEP 3118 formats remembered (pybind11 asks for a handful: 'f', 'i', 'q', '?', ...).
_FORMATS = 64


def cache_array_dtypes() -> bool:
    """Memoize numpy's ``_dtype_from_pep3118`` for plain (non-structured) formats; True when in place.

    pybind11 looks the parser up once per process, at its first use: call this before onnxruntime-genai
    returns its first float array (later, the call changes nothing and is harmless).
    """
    for name in ("numpy._core._internal", "numpy.core._internal"):
        try:
            internal = importlib.import_module(name)
            parse = internal._dtype_from_pep3118
            break
        except (ImportError, AttributeError):
            continue
    else:  # pragma: no cover - a numpy without the parser: nothing to cache
        log.debug("numpy has no _dtype_from_pep3118; array dtypes left uncached")
        return False
    if getattr(parse, "__wrapped__", None) is not None:
        return True
    known: dict[str, Any] = {}

    def parse_cached(spec: str, *rest: Any) -> Any:
        dtype = known.get(spec)
        if dtype is None or rest:
            dtype = parse(spec, *rest)
            # structured dtypes are mutable (``dtype.names``): never shared
            if not rest and dtype.fields is None and len(known) < _FORMATS:
                known[spec] = dtype
        return dtype

    parse_cached.__wrapped__ = parse  # type: ignore[attr-defined]
    internal._dtype_from_pep3118 = parse_cached
    return True


def per_token(
    generator: Any,
    decode: Callable[[int], str],
    cancel: threading.Event,
    eos: frozenset[int],
    budget: int,
    stats: Confidence | None,
) -> Loop:
    cancelled, done = cancel.is_set, generator.is_done
    next_token, next_tokens = generator.generate_next_token, generator.get_next_tokens
    produced = 0
    while produced < budget:
        if cancelled():
            return "cancelled"
        if done():
            return "stop"
        if stats is not None:
            stats.capture()
        next_token()
        token = int(next_tokens()[0])
        produced += 1
        ev = TokenEvent("") if token in eos else TokenEvent(decode(token))
        if stats is not None:
            stats.fill(ev, token)
        yield ev
        if token in eos:
            return "stop"
    return "length"


def coalesced(
    generator: Any,
    decode: Callable[[int], str],
    cancel: threading.Event,
    eos: frozenset[int],
    budget: int,
    stats: Confidence | None,
    most: int,
    interval_s: float | None,
) -> Loop:
    cancelled, done = cancel.is_set, generator.is_done
    next_token, next_tokens = generator.generate_next_token, generator.get_next_tokens
    get_logits = generator.get_logits if stats is not None else None
    keep_row = stats.rows.append if stats is not None else None
    keep_token = stats.tokens.append if stats is not None else None
    step = interval_s if interval_s is not None else math.inf
    clock = time.perf_counter
    pieces: list[str] = []
    add = pieces.append
    produced = n = 0
    due = 0.0  # the first token with text goes out at once
    finish = "length"
    while produced < budget:
        if cancelled():
            finish = "cancelled"
            break
        if done():
            finish = "stop"
            break
        if keep_row is not None:
            keep_row(get_logits())  # type: ignore[misc]
        next_token()
        token = int(next_tokens()[0])
        produced += 1
        n += 1
        if keep_token is not None:
            keep_token(token)
        if token in eos:
            finish = "stop"
            break
        add(decode(token))
        if n >= most or clock() >= due:
            ev = _event(pieces, n, stats)
            n = 0
            if ev.text:  # until some text has gone out, every token goes out at once
                due = clock() + step
            yield ev
    if n:
        yield _event(pieces, n, stats)
    return finish


def _event(pieces: list[str], n: int, stats: Confidence | None) -> TokenEvent:
    ev = TokenEvent("".join(pieces), n)
    pieces.clear()
    if stats is not None:
        stats.flush(ev)
    return ev
