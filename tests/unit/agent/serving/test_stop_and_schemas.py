"""Stop-sequence cutting and request-body validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.serving.generation import StopMatcher
from agent.serving.schemas import ChatCompletionRequest, CompletionRequest


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces if not m.hit)
    if not m.hit:
        out += m.flush()
    return out, m.hit


def test_stop_sequence_split_across_pieces_is_cut() -> None:
    assert _run(["END"], ["abc E", "N", "D more"]) == ("abc ", True)


def test_text_that_only_looks_like_a_stop_start_is_kept() -> None:
    assert _run(["END"], ["abc E", "x", "y"]) == ("abc Exy", False)


def test_earliest_of_several_stops_wins() -> None:
    assert _run(["}", "\n"], ['{"a":1', "\n}", "x"]) == ('{"a":1', True)


def test_no_stops_passes_everything_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False)


def test_chat_body_accepts_openai_fields_and_maps_max_completion_tokens() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": "x",
            "unknown_field": 1,
        }
    )
    assert body.max_tokens == 7
    assert body.to_prompt().messages[0].content == "hi"
    assert body.stop_list() == ["x"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_chat_body_refuses_bad_fields(patch: dict, field: str) -> None:
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate(data)
    assert err.value.errors()[0]["loc"][0] == field


def test_completion_body_takes_one_prompt() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["x"]}).to_prompt().text == "x"
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": ["x", "y"]})
