"""The og.Generator decode loops: coalesced events carry the same tokens, text and confidence as per-token ones."""

from __future__ import annotations

import importlib
import threading
from dataclasses import replace

import numpy as np

from agent.runtime import GenParams, Prompt, og_loop
from agent.runtime.og_loop import cache_array_dtypes

CHAT = Prompt.chat([{"role": "user", "content": "dim the lights in meeting room 21 to 90%"}])


def _events(model, params: GenParams, cancel_after: int | None = None) -> list:
    cancel = threading.Event()
    out = []
    for ev in model.generate(CHAT, params, cancel):
        out.append(ev)
        if cancel_after is not None and len(out) == cancel_after:
            cancel.set()
    return out


def test_coalesced_events_match_per_token_ones(load_model, serving_model_dir) -> None:
    model = load_model("ort-genai", serving_model_dir)
    base = GenParams(max_new_tokens=40, ignore_eos=True, want_logprobs=True)
    one = _events(model, base)
    batched = _events(model, replace(base, event_tokens=8))
    for events in (one, batched):
        assert events[-1].finish_reason == "length" and events[-1].token_count == 0
        assert sum(e.token_count for e in events) == 40
    assert "".join(e.text for e in batched) == "".join(e.text for e in one)
    lps = [v for e in one for v in e.logprobs or ()]
    ents = [v for e in one for v in e.entropies or ()]
    assert [v for e in batched for v in e.logprobs or ()] == lps and len(lps) == 40
    assert [v for e in batched for v in e.entropies or ()] == ents
    tokens = [e.token_count for e in batched[:-1]]
    assert tokens[0] == 1 and max(tokens) == 8  # the first token at once, then up to event_tokens
    for e in batched[:-1]:
        assert len(e.logprobs) == e.token_count  # each event scores its own tokens


def test_coalesced_events_honour_the_interval_and_cancel(load_model, serving_model_dir) -> None:
    model = load_model("ort-genai", serving_model_dir)
    params = GenParams(max_new_tokens=12, ignore_eos=True, event_tokens=32, event_interval_s=0.0)
    events = _events(model, params)
    assert [e.token_count for e in events] == [1] * 12 + [0]  # interval 0: every token as soon as it exists
    untimed = _events(model, replace(params, event_interval_s=None))
    assert [e.token_count for e in untimed] == [1, 11, 0]
    cancelled = _events(model, replace(params, max_new_tokens=60, event_tokens=4), cancel_after=2)
    assert cancelled[-1].finish_reason == "cancelled"
    assert sum(e.token_count for e in cancelled) < 60


def test_array_dtypes_are_parsed_once() -> None:
    assert cache_array_dtypes() and cache_array_dtypes()  # idempotent
    try:
        internal = importlib.import_module("numpy._core._internal")
    except ImportError:  # numpy 1.x
        internal = importlib.import_module("numpy.core._internal")
    parse = internal._dtype_from_pep3118
    assert parse("f") is parse("f") and parse("f") == np.dtype(np.float32)
    structured = parse("T{f:a:i:b:}")  # mutable (names): a fresh one every time
    assert structured.names == ("a", "b") and parse("T{f:a:i:b:}") is not structured


class _FakeGenerator:
    """Tokens 0, 1, 2, ... one per step; no logits needed."""

    def __init__(self) -> None:
        self.token = -1

    def is_done(self) -> bool:
        return False

    def generate_next_token(self) -> None:
        self.token += 1

    def get_next_tokens(self) -> np.ndarray:
        return np.array([self.token], dtype=np.int32)


def test_tokens_before_the_first_text_go_out_at_once() -> None:
    """Time to first token is time to first *text*: tokens that decode to nothing do not start the interval."""
    decode = lambda t: "" if t < 3 else f"<{t}>"  # noqa: E731
    loop = og_loop.coalesced(_FakeGenerator(), decode, threading.Event(), frozenset(), 10, None, 32, 60.0)
    events = list(loop)
    assert [e.token_count for e in events] == [1, 1, 1, 1, 6]
    assert [e.text for e in events[:4]] == ["", "", "", "<3>"]
    assert "".join(e.text for e in events) == "".join(f"<{t}>" for t in range(3, 10))
