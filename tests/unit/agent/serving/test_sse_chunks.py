"""SSE chunks of a streamed answer: the templated text chunk is byte for byte the dict-built one."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from agent.serving.handlers import _Chunks

TEXTS = ["hello", ' "quoted" \\ back', "line\nbreak\ttab", "héllo 世界 🙂", "\x00\x1f", ""]


def _chunks(chat: bool) -> _Chunks:
    gen: Any = SimpleNamespace(request_id="chatcmpl-abc", lease=SimpleNamespace(version="v1"), hold_output=False)
    return _Chunks(gen, "tiny", chat, include_usage=False)


@pytest.mark.parametrize("chat", [True, False])
def test_text_chunk_template_matches_the_dict_built_chunk(chat: bool) -> None:
    sse = _chunks(chat)
    for text in TEXTS:
        assert sse.text(text) == sse.chunk(text)
        payload = json.loads(sse.text(text).removeprefix("data: "))
        got = payload["choices"][0]["delta"]["content"] if chat else payload["choices"][0]["text"]
        assert got == text


def test_batch_joins_deltas_and_keeps_logprobs() -> None:
    sse = _chunks(True)
    assert sse.batch([("delta", "a"), ("delta", "b")]) == sse.chunk("ab")
    entry = {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}
    mixed = sse.batch([("logprobs", entry), ("delta", "a")])
    assert mixed == sse.chunk("a", None, None, [entry])
    assert json.loads(mixed.removeprefix("data: "))["choices"][0]["logprobs"]["content"] == [entry]
