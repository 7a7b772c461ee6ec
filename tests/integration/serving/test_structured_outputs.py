"""Guided decoding through the official ``openai`` client against a real agent on a tiny model (issue #16).

A random-init model writes nonsense, so every structured answer here is valid only because decoding is
constrained: each test fails if the constraint is dropped or ignored.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

PROMPTS = [
    "turn on the lights in the kitchen",
    "dim the lights in meeting room 21 to 90%",
    "close the blinds in office 19",
    "set the temperature in the lobby to 21 degrees",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["lights_on", "lights_off", "set_temperature", "close_blinds"]},
        "level": {"type": "integer", "minimum": 0, "maximum": 100},
        "room": {"type": "string", "maxLength": 12},
    },
    "required": ["intent", "level", "room"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "command", "schema": SCHEMA, "strict": True}}


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def live(load_model, long_context_model_dir, start_serving):
    return start_serving(load_model("ort-genai", long_context_model_dir, model_id="tiny"), workers=4)


def test_json_schema_answers_are_all_valid_streamed_and_full(live) -> None:
    client = live.client()
    for i, prompt in enumerate(PROMPTS):
        kw = {"model": "tiny", "messages": _msg(prompt), "max_tokens": 80, "temperature": 1.0, "seed": i}
        full = client.chat.completions.create(response_format=FORMAT, **kw)
        assert full.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(full.choices[0].message.content), SCHEMA)
        chunks = list(client.chat.completions.create(response_format=FORMAT, stream=True, **kw))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == full.choices[0].message.content  # same seed: same answer either way
    # unguided, the same model does not write JSON: the schema is what made them valid
    raw = client.chat.completions.create(
        model="tiny", messages=_msg(PROMPTS[0]), max_tokens=30, temperature=1.0, seed=0
    )
    with pytest.raises(ValueError):
        json.loads(raw.choices[0].message.content)


class Command(BaseModel):
    intent: Literal["lights_on", "lights_off"]
    level: int = Field(ge=0, le=100)


def test_parse_with_a_pydantic_model(live) -> None:
    parsed = live.client().chat.completions.parse(
        model="tiny", messages=_msg(PROMPTS[1]), max_tokens=60, response_format=Command
    )
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Command) and 0 <= answer.level <= 100


def test_json_object_regex_and_lark_grammar(live) -> None:
    client = live.client()
    kw = {"model": "tiny", "max_tokens": 40, "temperature": 1.0, "seed": 3}
    obj = client.chat.completions.create(messages=_msg(PROMPTS[2]), response_format={"type": "json_object"}, **kw)
    text = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":  # an open object may hit max_tokens; what came must still parse
        assert isinstance(json.loads(text), dict)
    assert text.startswith("{")
    regex = client.chat.completions.create(
        messages=_msg(PROMPTS[0]), extra_body={"guided_regex": r"room [0-9]{2}"}, **kw
    )
    assert re.fullmatch(r"room [0-9]{2}", regex.choices[0].message.content)
    grammar = 'start: answer " " NUMBER\nanswer: "yes" | "no"\nNUMBER: /[0-9]{1,3}/'
    lark = client.chat.completions.create(messages=_msg(PROMPTS[0]), extra_body={"guided_grammar": grammar}, **kw)
    assert re.fullmatch(r"(yes|no) [0-9]{1,3}", lark.choices[0].message.content)


def test_what_cannot_be_enforced_is_a_400_naming_it(live) -> None:
    client = live.client()
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "ipv9"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=_msg("hi"), max_tokens=5, response_format=bad)
    body = err.value.body
    assert body["param"] == "response_format" and body["code"] == "unsupported_schema" and "ipv9" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=_msg("hi"), max_tokens=5, extra_body={"guided_regex": "(?=a)b"}
        )
    assert err.value.body["param"] == "guided_regex" and "look-around" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=_msg("hi"), max_tokens=5, response_format=FORMAT, extra_body={"guided_regex": "a"}
        )
    assert err.value.body["param"] == "guided_regex"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny",
            messages=_msg("hi"),
            max_tokens=5,
            response_format={"type": "xml"},  # type: ignore[arg-type]
        )
    assert err.value.body["param"] == "response_format.type"


def test_logprobs_and_top_logprobs_full_and_streamed(live) -> None:
    client = live.client()
    kw = {"model": "tiny", "messages": _msg(PROMPTS[0]), "max_tokens": 6, "logprobs": True, "top_logprobs": 3}
    full = client.chat.completions.create(**kw)
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens
    assert "".join(e.token for e in content) == full.choices[0].message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 3 for e in content)
    # greedy: the chosen token is the most likely one, so no alternative is likelier
    assert all(e.logprob >= e.top_logprobs[0].logprob - 1e-5 for e in content)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    # every request's record carries per-token confidence for drift telemetry (asked for or not)
    client.chat.completions.create(
        model="tiny", messages=_msg(PROMPTS[1]), max_tokens=5, extra_body={"ignore_eos": True}
    )
    rec = live.records[-1]
    assert len(rec["token_logprobs"]) == len(rec["token_entropies"]) == rec["completion_tokens"] == 5
    assert all(lp <= 0 for lp in rec["token_logprobs"]) and all(h >= 0 for h in rec["token_entropies"])


def test_the_task_schema_is_enforced_by_default(load_model, long_context_model_dir, start_serving) -> None:
    model = load_model("ort-genai", long_context_model_dir, model_id="tiny")
    live = start_serving(model, output_schema=SCHEMA, enforce_schema=True)
    client = live.client()
    for i, prompt in enumerate(PROMPTS[:2]):
        out = client.chat.completions.create(model="tiny", messages=_msg(prompt), max_tokens=80, seed=i)
        jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)
    free = client.chat.completions.create(
        model="tiny", messages=_msg(PROMPTS[0]), max_tokens=20, response_format={"type": "text"}
    )
    assert not free.choices[0].message.content.startswith('{"intent"')


def test_guidance_is_refused_on_foundry_local(load_model, serving_model_dir, start_serving) -> None:
    live = start_serving(load_model("foundry-local", serving_model_dir, model_id="tiny"))
    with pytest.raises(openai.BadRequestError) as err:
        live.client().chat.completions.create(model="tiny", messages=_msg("hi"), max_tokens=5, response_format=FORMAT)
    assert err.value.body["param"] == "response_format" and "foundry-local" in err.value.body["message"]
    assert err.value.body["code"] == "unsupported"


def test_demo_traffic_sends_the_task_schema(live) -> None:
    from controller.demo.traffic import Traffic

    traffic = Traffic(live.url)
    try:
        answers = traffic.run("base", 3)
    finally:
        traffic.close()
    assert len(answers) == 3 and not any(a.error for a in answers)
    # only a guided model starts every answer with the task's first key and a known intent
    intents = get_task_intents()
    for a in answers:
        assert a.answer.startswith('{"intent":"') and a.answer.split('"')[3] in intents


def get_task_intents() -> set[str]:
    from controller.factory.tasks import get_task

    return set(get_task("smart-building").intents)
