"""A bounded fuzz of the completion endpoints: random bodies never get a 5xx, and the agent serves afterwards.

2000 requests from ``random.Random(1234)`` to a real serving server with the tiny model: bytes that are not
JSON, JSON that is not an object, valid bodies with one field set to a value of a random type (huge and
negative numbers, NaN/Infinity strings and literals, unicode and lone surrogates, deep nesting, empty
containers), fields removed or added, bodies around the size limit, and a share of valid requests (1-4 new
tokens, streaming or not) that must be answered 200.
"""

from __future__ import annotations

import json
import random
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fixtures.serving import Live

SEED = 1234
REQUESTS = 2000
LIMIT = 64 * 1024  # max_body_bytes for this server: a few bodies go past it
MSG = [{"role": "user", "content": "turn on the lights in the kitchen"}]
CHAT = {"model": "tiny", "messages": MSG, "max_tokens": 2}
TEXT = {"model": "tiny", "prompt": "turn on the lights", "max_tokens": 2}
FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
    "stream", "stream_options", "stop", "seed", "user", "presence_penalty", "frequency_penalty", "ignore_eos",
    "logprobs", "tools", "echo", "suffix", "best_of",
]  # fmt: skip
NASTY_STRINGS = [
    "", " ", "NaN", "nan", "Infinity", "-inf", "1e999", "true", "yes", "null", "0x10", "\u0000", "\ud800",
    "\udfff", "é" * 50, "温度" * 20, "\U0001f600" * 10, "<|user|>", "{{ raise }}", "{% for x in y %}", "\\",
    "\"", "a" * 5000,
]  # fmt: skip
NASTY_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, 2**63, -(2**63) - 1, 2**64 + 1, 10**400, 1e308, -1e308, 0.5, 1e-320]


def _scalar(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(NASTY_STRINGS)
    if kind == 1:
        return rng.choice(NASTY_NUMBERS)
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(40)))
    if kind == 4:
        return rng.uniform(-5, 5)
    return rng.randrange(-10, 300)


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars, lists and objects, nested a few levels."""
    if depth >= 4 or rng.random() < 0.55:
        return _scalar(rng)
    if rng.random() < 0.5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [*FIELDS, "role", "content", "type", "text", "include_usage", "", "\ud800"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _message(rng: random.Random) -> Any:
    roles = ["system", "user", "assistant", "developer", "tool", "robot", "", None]
    content: Any = rng.choice([_scalar(rng), [{"type": "text", "text": _scalar(rng)}], [], None, "hi"])
    msg = {"role": rng.choice(roles), "content": content}
    if rng.random() < 0.2:
        msg[rng.choice(["name", "tool_calls", "extra"])] = _value(rng)
    return msg if rng.random() < 0.9 else _value(rng)


def _nested(rng: random.Random) -> Any:
    value: Any = rng.choice([1, "x", None])
    for _ in range(rng.randrange(50, 400)):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def _mutated(rng: random.Random, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = dict(CHAT if chat else TEXT)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        field = rng.choice(FIELDS)
        if op == 0:
            body.pop(rng.choice(list(body) or ["model"]), None)
        elif op == 1:
            body[field] = _value(rng)
        elif op == 2:
            body[field] = _nested(rng)
        elif op == 3 and chat:
            body["messages"] = [_message(rng) for _ in range(rng.randrange(0, 5))]
        else:
            body[rng.choice(["junk", "metadata", "store", "x" * 100])] = _value(rng)
    return body


def _valid(rng: random.Random, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = dict(CHAT if chat else TEXT)
    body["max_tokens"] = rng.randrange(1, 5)
    body["temperature"] = rng.choice([0, 0.7, 1.0, 2.0])
    body["top_p"] = rng.choice([1.0, 0.5, 1e-9])
    body["top_k"] = rng.choice([0, 1, 40, 2**31 - 1])
    body["seed"] = rng.choice([None, 0, 2**31 - 1])
    body["stream"] = rng.random() < 0.4
    if rng.random() < 0.3:
        body["stop"] = rng.choice(["\n", ["a", "b"], "}"])
    return body


def _not_json(rng: random.Random) -> bytes:
    choices: list[Callable[[], bytes]] = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
        lambda: json.dumps(CHAT).encode()[: rng.randrange(60)],
        lambda: b"",
        lambda: b"NaN",
        lambda: b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
        lambda: b'{"model": "tiny", "max_tokens": 1e999999, "messages": []}',
        lambda: b"[" * rng.randrange(100, 20000),
        lambda: b'{"a":' * rng.randrange(100, 5000),
        lambda: b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 1}',
        lambda: "\ufeff".encode() + json.dumps(CHAT).encode(),
        lambda: json.dumps(CHAT).encode().replace(b"{", b"{" + b" " * rng.randrange(LIMIT - 100, LIMIT + 100), 1),
    ]
    return rng.choice(choices)()


def _case(rng: random.Random) -> tuple[str, bytes, bool]:
    """(path, body, must_succeed)."""
    chat = rng.random() < 0.6
    path = "/chat/completions" if chat else "/completions"
    roll = rng.random()
    if roll < 0.12:
        return path, json.dumps(_valid(rng, chat)).encode(), True
    if roll < 0.3:
        return path, _not_json(rng), False
    if roll < 0.4:
        return path, json.dumps(_value(rng)).encode(), False
    return path, json.dumps(_mutated(rng, chat)).encode(), False


def _check(
    http: httpx.Client, live: Live, path: str, raw: bytes, must_succeed: bool, codes: Counter[int]
) -> str | None:
    """What went wrong, or None."""
    resp = http.post(f"{live.url}{path}", content=raw, headers={"Content-Type": "application/json"})
    codes[resp.status_code] += 1
    text = resp.text
    if resp.status_code >= 500 or "server_error" in text:
        return f"{resp.status_code} for {raw[:300]!r}: {text[:300]}"
    if must_succeed and resp.status_code != 200:
        return f"a valid body got {resp.status_code}: {raw[:300]!r}: {text[:300]}"
    if resp.status_code >= 400 and set(resp.json()) != {"error"}:
        return f"not an OpenAI error body: {text[:300]}"
    return None


@pytest.fixture
def live(load_model, serving_model_dir, start_serving) -> Live:
    model = load_model("ort-genai", serving_model_dir, model_id="tiny")
    return start_serving(model, max_body_bytes=LIMIT, workers=2, max_queue=64)


def test_random_bodies_never_get_a_5xx_and_the_agent_serves_afterwards(live: Live) -> None:
    rng = random.Random(SEED)
    problems: list[str] = []
    codes: Counter[int] = Counter()
    valid = 0
    with httpx.Client(timeout=60) as http:
        for _ in range(REQUESTS):
            path, raw, must_succeed = _case(rng)
            valid += must_succeed
            problem = _check(http, live, path, raw, must_succeed, codes)
            if problem is not None:
                problems.append(problem)
        assert problems == [], f"{len(problems)} bad answers, first ones:\n" + "\n".join(problems[:10])
        assert valid > REQUESTS // 20
        assert {200, 400, 404, 413} <= set(codes), codes  # the cases reach every layer
        assert http.get(f"{live.base_url}/healthz").json() == {"status": "ok"}
        out = http.post(f"{live.url}/chat/completions", json={**CHAT, "temperature": 0}).json()
    assert out["usage"]["completion_tokens"] > 0
    assert not [r for r in live.records if r["error"]]
    assert live.serving.queue.wait_idle(10)
