"""Tool-call grammar and parsing, and the request fields -> guidance mapping (no model needed)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from agent.serving import guidance, tools
from agent.serving.errors import RequestFieldError

PARAMS = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
TOOLS = [
    {"type": "function", "function": {"name": "a", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "b"}},
]


def test_choice_modes_and_schema() -> None:
    assert tools.chosen(TOOLS, None)[0] == "auto"
    mode, fns = tools.chosen(TOOLS, {"type": "function", "function": {"name": "b"}})
    assert mode == "required" and list(fns) == ["b"]
    with pytest.raises(RequestFieldError) as err:
        tools.chosen(TOOLS, {"type": "function", "function": {"name": "zz"}})
    assert err.value.param == "tool_choice"
    schema = tools.calls_schema(tools.chosen(TOOLS, "required")[1], parallel=False)
    jsonschema.validate([{"name": "a", "arguments": {"x": 1}}], schema)
    for bad in ([{"name": "a", "arguments": {}}], [{"name": "c", "arguments": {}}], []):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):  # not parallel: one call at most
        jsonschema.validate([{"name": "b", "arguments": {}}] * 2, schema)
    kind, data = tools.guidance("auto", tools.chosen(TOOLS, "auto")[1], True)
    assert kind == "lark_grammar" and "%json" in data and tools.guidance("none", {}, True) is None


def test_parse_and_render_calls() -> None:
    fns = tools.chosen(TOOLS, "auto")[1]
    calls = tools.parse_calls('[{"name":"a","arguments":{"x":2}}]', fns)
    assert calls and calls[0]["function"] == {"name": "a", "arguments": '{"x": 2}'}
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert tools.parse_calls("hello", fns) is None and tools.parse_calls('[{"name":"zz"}]', fns) is None
    rendered = tools.render_calls(calls)
    assert json.loads(rendered) == [{"name": "a", "arguments": {"x": 2}}]


def test_request_fields_to_guidance() -> None:
    assert guidance.request_spec(None, None, None, None) is None
    assert guidance.request_spec({"type": "text"}, None, None, None) is None
    field, (kind, data) = guidance.request_spec({"type": "json_object"}, None, None, None)
    assert field == "response_format" and kind == "json_schema"
    assert json.loads(data)["x-guidance"]["whitespace_flexible"] is False
    own = {"type": "object", "x-guidance": {"whitespace_flexible": True}}
    _, (_, data) = guidance.request_spec(None, own, None, None)
    assert json.loads(data) == own  # a schema's own x-guidance is kept
    assert guidance.request_spec(None, None, "a+", None) == ("guided_regex", ("regex", "a+"))
    with pytest.raises(RequestFieldError) as err:
        guidance.request_spec(None, None, "a+", 'start: "a"')
    assert err.value.param == "guided_grammar"
    with pytest.raises(RequestFieldError) as err:
        guidance.request_spec({"type": "json_schema", "json_schema": "x"}, None, None, None)
    assert err.value.param == "response_format.json_schema"
