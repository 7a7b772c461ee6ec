"""Every request field of the chat completions API, as docs/serving.md's table says, through the official client.

The table must list every field the installed ``openai`` client can send; each row is sent to a real agent:
supported / ignored / extension rows get a 200, refused rows a 400 whose ``param`` names the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

DOC = Path(__file__).resolve().parents[3] / "docs" / "serving.md"
ROW = re.compile(r"^\| `([a-z_]+)` \| (supported|ignored|refused|extension) \|", re.M)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
# field -> (keyword arguments sent with it, or None for ``messages``/``model`` which every call sends)
SAMPLES: dict[str, dict[str, Any] | None] = {
    "messages": None,
    "model": None,
    "max_completion_tokens": {"max_completion_tokens": 3},
    "max_tokens": {"max_tokens": 3},
    "temperature": {"temperature": 0.5, "seed": 1},
    "top_p": {"top_p": 0.9},
    "seed": {"seed": 1, "temperature": 1.0},
    "stop": {"stop": ["zz"]},
    "stream": {"stream": True},
    "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
    "n": {"n": 1},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "response_format": {"response_format": {"type": "json_object"}},
    "tools": {"tools": TOOLS},
    "tool_choice": {"tools": TOOLS, "tool_choice": "none"},
    "parallel_tool_calls": {"tools": TOOLS, "parallel_tool_calls": False},
    "user": {"user": "u"},
    "metadata": {"metadata": {"k": "v"}},
    "store": {"store": False},
    "service_tier": {"service_tier": "auto"},
    "prompt_cache_key": {"prompt_cache_key": "k"},
    "safety_identifier": {"safety_identifier": "s"},
    "prompt_cache_options": {"extra_body": {"prompt_cache_options": {"mode": "explicit"}}},
    "prompt_cache_retention": {"prompt_cache_retention": "24h"},
    "presence_penalty": {"presence_penalty": 0.5},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "logit_bias": {"logit_bias": {"1": 1}},
    "modalities": {"modalities": ["audio"]},
    "audio": {"audio": {"voice": "alloy", "format": "wav"}},
    "prediction": {"prediction": {"type": "content", "content": "x"}},
    "web_search_options": {"web_search_options": {}},
    "reasoning_effort": {"reasoning_effort": "low"},
    "verbosity": {"verbosity": "low"},
    "moderation": {"extra_body": {"moderation": {"policy": {"input": {"mode": "score"}}}}},
    "functions": {"functions": [{"name": "f", "parameters": {}}]},
    "function_call": {"function_call": "auto"},
    "top_k": {"extra_body": {"top_k": 5}},
    "ignore_eos": {"extra_body": {"ignore_eos": True}},
    "guided_json": {"extra_body": {"guided_json": {"type": "object"}}},
    "guided_regex": {"extra_body": {"guided_regex": "a+"}},
    "guided_grammar": {"extra_body": {"guided_grammar": 'start: "a"'}},
}


def _table() -> dict[str, str]:
    return dict(ROW.findall(DOC.read_text()))


def test_the_table_lists_every_field_the_client_can_send() -> None:
    table = _table()
    client_fields = set(CompletionCreateParamsBase.__annotations__) | {"stream"}
    assert client_fields <= set(table), f"missing from docs/serving.md: {sorted(client_fields - set(table))}"
    assert set(table) == set(SAMPLES)


@pytest.fixture
def live(load_model, long_context_model_dir, start_serving):
    return start_serving(load_model("ort-genai", long_context_model_dir, model_id="tiny"))


def test_every_row_behaves_as_documented(live) -> None:
    client = live.client()
    msgs = [{"role": "user", "content": "turn on the lights"}]
    for field, status in _table().items():
        kw = SAMPLES[field]
        if kw is None:
            continue
        call = {"model": "tiny", "messages": msgs, "max_tokens": 4, **kw}
        if status == "refused":
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(**call)
            assert err.value.body["param"] == field, field
            continue
        out = client.chat.completions.create(**call)
        if kw.get("stream"):
            chunks = list(out)
            assert chunks[-1].usage is not None or "stream_options" not in kw, field
        else:
            assert out.choices[0].finish_reason in ("stop", "length", "tool_calls"), field
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=msgs, n=2)
    assert err.value.body["param"] == "n"


def test_models_list_the_context_length(live, load_model, lora_model, start_serving) -> None:
    card = live.client().models.list().data[0]
    assert card.id == "tiny" and card.context_length == 2048 and card.parent is None
    model = load_model("ort-genai", lora_model["model"], model_id="base")
    model.load_adapter(lora_model["adapter"], "lora")
    cards = {m.id: m for m in start_serving(model).client().models.list().data}
    assert set(cards) == {"base", "base:lora"}
    assert cards["base:lora"].parent == "base" and cards["base:lora"].context_length == model.context_length
