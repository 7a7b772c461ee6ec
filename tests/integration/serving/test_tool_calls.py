"""Tool calls through the official ``openai`` client: full and streamed, every tool_choice, tool history."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from agent.runtime.base import Message, Prompt

LIGHT = {
    "type": "object",
    "properties": {"room": {"type": "string", "enum": ["kitchen", "lobby", "office"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
    "additionalProperties": False,
}
TEMP = {
    "type": "object",
    "properties": {"degrees": {"type": "integer", "minimum": 10, "maximum": 30}},
    "required": ["degrees"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "set_light", "description": "switch a light", "parameters": LIGHT}},
    {"type": "function", "function": {"name": "set_temp", "description": "set the temperature", "parameters": TEMP}},
]
SCHEMAS = {"set_light": LIGHT, "set_temp": TEMP}
MSG = [{"role": "user", "content": "turn on the lights in the kitchen"}]


@pytest.fixture
def live(load_model, long_context_model_dir, start_serving):
    return start_serving(load_model("ort-genai", long_context_model_dir, model_id="tiny"))


def _valid(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_and_named_tool_calls_parse(live) -> None:
    client = live.client()
    for seed in range(3):
        out = client.chat.completions.create(
            model="tiny", messages=MSG, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=1.0, seed=seed
        )
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            _valid(call.function.name, call.function.arguments)
    named = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "set_temp"}},
        parallel_tool_calls=False,
        max_tokens=80,
    )
    calls = named.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "set_temp"
    _valid("set_temp", calls[0].function.arguments)


def test_streamed_tool_calls_equal_the_full_ones(live) -> None:
    client = live.client()
    kw = {"model": "tiny", "messages": MSG, "tools": TOOLS, "tool_choice": "required", "max_tokens": 120}
    full = client.chat.completions.create(temperature=0.9, seed=5, **kw).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(stream=True, temperature=0.9, seed=5, **kw))
    deltas = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (i, c.function.name, c.function.arguments) for i, c in enumerate(full)
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # the client's own stream helper assembles them too
    with client.chat.completions.stream(temperature=0.9, seed=5, **kw) as stream:
        final = stream.get_final_completion()
    assert [c.function.arguments for c in final.choices[0].message.tool_calls] == [c.function.arguments for c in full]


def test_tool_choice_none_and_auto(live) -> None:
    client = live.client()
    none = client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")
    auto = client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, max_tokens=60, temperature=0)
    choice = auto.choices[0]
    if choice.message.tool_calls:  # auto may call or answer; a call must still be valid
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            _valid(call.function.name, call.function.arguments)
    else:
        assert not (choice.message.content or "").startswith("[")


def test_tool_results_in_history_are_rendered_by_the_chat_template(live) -> None:
    client = live.client()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "set_light", "arguments": '{"room":"lobby","on":true}'},
    }
    history = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done: lobby light on"},
    ]
    out = client.chat.completions.create(model="tiny", messages=history, max_tokens=4)
    model = live.serving.slot.current.model
    expected = Prompt(
        messages=(
            Message("user", MSG[0]["content"]),
            Message("assistant", '[{"name": "set_light", "arguments": {"room": "lobby", "on": true}}]'),
            Message("tool", "done: lobby light on"),
        )
    )
    rendered = model.apply_chat_template([m.as_dict() for m in expected.messages])
    assert "<|tool|>done: lobby light on" in rendered  # the tiny model's template renders every role
    assert out.usage.prompt_tokens == model.count_prompt_tokens(expected)


def test_tool_refusals_name_the_field(live) -> None:
    client = live.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=MSG, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert err.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, tool_choice="required")
    assert err.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, tools=[{"type": "retrieval"}])  # type: ignore[list-item]
    assert err.value.body["param"] == "tools.0"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"
