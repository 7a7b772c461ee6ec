"""The OpenAI-compatible API through the official ``openai`` client, on every runtime backend."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MSG = [{"role": "user", "content": "turn on the lights in the kitchen"}]


@pytest.fixture
def live(runtime_name, load_model, serving_model_dir, start_serving):
    return start_serving(load_model(runtime_name, serving_model_dir, model_id="tiny"), version="7")


def test_chat_non_streaming_and_streaming_agree(live) -> None:
    client = live.client()
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=16, temperature=0)
    assert full.object == "chat.completion" and full.model == "tiny"
    assert full.system_fingerprint == "slmops-7"
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < full.usage.completion_tokens <= 16 and full.usage.prompt_tokens > 0

    stream = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens

    # one record per request, with the telemetry keys the aggregator reads
    assert len(live.records) == 2
    rec = live.records[-1]
    for key in (
        "queue_wait_ms",
        "ttft_ms",
        "itl_ms",
        "total_ms",
        "prompt_tokens",
        "completion_tokens",
        "error",
        "cancelled",
        "prompt_nll",
        "output_text",
        "prompt_text",
        "model_id",
    ):
        assert key in rec
    assert rec["stream"] is True and rec["output_text"] == text and rec["prompt_text"] == MSG[0]["content"]
    assert rec["ttft_ms"] <= rec["total_ms"] and not rec["error"] and not rec["cancelled"]
    assert rec["version"] == "7"


def test_models_lists_the_served_model(live) -> None:
    ids = [m.id for m in live.client().models.list()]
    assert ids == ["tiny"]
    with pytest.raises(openai.NotFoundError) as err:
        live.client().chat.completions.create(model="other", messages=MSG)
    assert err.value.body["code"] == "model_not_found"


def test_too_long_prompt_and_too_many_tokens_are_400_naming_the_field(live) -> None:
    client = live.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "lights " * 300}])
    assert err.value.body["param"] == "messages" and err.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 128" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=500)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, temperature=5)
    assert err.value.body["param"] == "temperature"
    assert live.records == []  # refused requests are not admitted


def test_malformed_bodies_are_openai_style_400s(live) -> None:
    url = f"{live.url}/chat/completions"
    cases = [
        (b'{"model": "tiny", "messages": [', "body", "Invalid JSON"),
        (b'["not", "an", "object"]', "body", "should be"),
        (b'{"model": "tiny", "messages": "hi"}', "messages", "should be"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "only n=1"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "Field required"),
    ]
    with httpx.Client(timeout=30) as http:
        for raw, param, words in cases:
            resp = http.post(url, content=raw, headers={"Content-Type": "application/json"})
            assert resp.status_code == 400, raw
            error = resp.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param, raw
            assert error["message"].startswith(f"Invalid value for '{param}': ") and words in error["message"], raw
        text = http.get(f"{live.base_url}/metrics").text
    labels = {"model": "tiny", "version": "7", "profile": ""}
    assert _sample(text, "slmops_requests_total", **labels, status="invalid") == len(cases)
    assert live.records == []


def test_stop_sequence_cuts_the_answer(live) -> None:
    client = live.client()
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=16).choices[0].message.content
    stop = full[3:6]
    cut = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=16, stop=[stop]).choices[0]
    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_completions_endpoint(live, runtime_name) -> None:
    client = live.client()
    if runtime_name == "foundry-local":
        with pytest.raises(openai.BadRequestError, match="raw text completions") as err:
            client.completions.create(model="tiny", prompt="turn on", max_tokens=5)
        assert err.value.body["param"] == "prompt"
        return
    full = client.completions.create(model="tiny", prompt="turn on", max_tokens=5, temperature=0)
    assert full.object == "text_completion" and full.usage.completion_tokens == 5
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="tiny", prompt="turn on", max_tokens=5, temperature=0, stream=True)
    )
    assert streamed == full.choices[0].text


def test_ignore_eos_extension_fixes_the_length(live, runtime_name) -> None:
    client = live.client()
    if runtime_name == "foundry-local":
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, extra_body={"ignore_eos": True})
        return
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 30 and out.choices[0].finish_reason == "length"


def test_health_readiness_feedback_and_metrics(live) -> None:
    base = live.base_url
    http = httpx.Client(timeout=30)
    assert http.get(f"{base}/healthz").json() == {"status": "ok"}
    live.serving.require_health = True
    ready = http.get(f"{base}/readyz")
    assert ready.status_code == 503 and "no health check" in ready.json()["message"]
    live.serving.set_health(True, "golden ok")
    ready = http.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == "tiny" and ready.json()["active_provider"] == "cpu"
    live.serving.set_health(False, "golden mismatch")
    assert http.get(f"{base}/readyz").status_code == 503

    out = live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=8)
    fb = http.post(f"{live.url}/feedback", json={"id": out.id, "positive": False})
    assert fb.status_code == 200 and live.feedback == [
        {"id": out.id, "positive": False, "model_id": "tiny", "version": "7"}
    ]
    assert http.post(f"{live.url}/feedback", json={"id": "chatcmpl-nope", "positive": True}).status_code == 404
    assert http.post(f"{live.url}/feedback", json={"id": out.id}).status_code == 400

    text = http.get(f"{base}/metrics").text
    labels = {"model": "tiny", "version": "7", "profile": ""}
    assert _sample(text, "slmops_requests_total", **labels, status="ok") == 1
    assert _sample(text, "slmops_requests_total", **labels, status="invalid") == 1  # the 400 feedback body
    assert _sample(text, "slmops_tokens_generated_total", **labels) == out.usage.completion_tokens
    assert _sample(text, "slmops_request_latency_seconds_count", **labels) == 1
    assert _sample(text, "slmops_ttft_seconds_count", **labels) == 1
    assert _sample(text, "slmops_queue_depth", **labels) == 0
    assert _sample(text, "slmops_feedback_total", **labels, kind="negative") == 1
    assert _sample(text, "slmops_health_ok", **labels) == 0


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_api_key_is_required_when_configured(runtime_name, load_model, serving_model_dir, start_serving) -> None:
    live = start_serving(load_model(runtime_name, serving_model_dir, model_id="tiny"), api_key="s3cret")
    with pytest.raises(openai.AuthenticationError) as err:
        live.client("wrong").models.list()
    assert err.value.body["code"] == "invalid_api_key"
    assert httpx.post(f"{live.url}/chat/completions", json={"model": "tiny", "messages": MSG}).status_code == 401
    out = live.client("s3cret").chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert out.usage.completion_tokens > 0
    assert httpx.get(f"{live.base_url}/healthz").status_code == 200  # probes stay open


def test_no_model_loaded_is_503(start_serving) -> None:
    live = start_serving(None)
    with pytest.raises(openai.InternalServerError) as err:
        live.client().chat.completions.create(model="tiny", messages=MSG)
    assert err.value.status_code == 503
    assert httpx.get(f"{live.base_url}/readyz").status_code == 503


@pytest.mark.slow  # first run builds the LoRA fixture (~25 s); cached afterwards
def test_lora_adapter_is_addressable_by_model_name(load_model, lora_model, start_serving) -> None:
    model = load_model("ort-genai", lora_model["model"], model_id="tiny")
    model.load_adapter(lora_model["adapter"], "lora")
    live = start_serving(model)
    client = live.client()
    assert [m.id for m in client.models.list()] == ["tiny", "tiny:lora"]
    base = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12).choices[0].message.content
    tuned = client.chat.completions.create(model="tiny:lora", messages=MSG, max_tokens=12)
    assert tuned.model == "tiny:lora"
    assert tuned.choices[0].message.content != base
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="tiny:lora", messages=MSG, max_tokens=12, stream=True)
        if c.choices
    )
    assert streamed == tuned.choices[0].message.content
    assert [r["adapter"] for r in live.records] == [None, "lora", "lora"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny:other", messages=MSG)
