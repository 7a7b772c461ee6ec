"""Request bodies of the OpenAI-compatible API (pydantic), and the response/chunk builders.

Unknown top-level fields are ignored, not refused: the ``openai`` client sends whatever its caller passes, and
its list of fields grows with every release (``store``, ``metadata``, ``service_tier``, ``prompt_cache_key``,
``safety_identifier``, ...; other OpenAI clients send their own), so refusing unknown names would break
clients that work against OpenAI itself. Ignoring them costs no unbounded buffering: the whole body is capped
before it is parsed (``max_body_bytes``, see :mod:`agent.serving.limits`). Known fields we cannot honour (``n > 1``,
``logit_bias``, non-zero penalties, audio, ``functions``, echo, ...) are refused with a 400 naming them; the
full table is in docs/serving.md.

Types are strict where a lax reading would change the request's meaning or reach native code unchecked:
booleans must be JSON ``true``/``false`` (``"stream": "yes"`` is a 400 naming ``stream``, not a stream);
floats must be finite; integers that go to onnxruntime-genai as C++ ``int`` (``seed``, ``top_k``,
``max_tokens``) are bounded to what it takes, so an out-of-range value is a 400 naming the field instead of a
failed cast at generation time. Extensions: ``ignore_eos``, ``top_k``, ``guided_json``, ``guided_regex`` and
``guided_grammar`` (as in vLLM; pass them with the client's ``extra_body``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from agent.runtime.base import Message, Prompt
from shared.genai_seed import SEED_BITS

# onnxruntime-genai's search options are C++ ints: a bigger Python int fails to cast (a 500 at generation).
MAX_INT = 2**31 - 1
# The largest seed it takes; -1 would mean "ask std::random_device" (see shared/genai_seed.py), so no negatives.
MAX_SEED = 2**SEED_BITS - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _GenerationBody(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    user: str | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # extensions
    ignore_eos: StrictBool = False
    top_k: int = Field(default=0, ge=0, le=MAX_INT)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported on this agent")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("presence/frequency penalties are not supported on this agent (send 0)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("logit_bias is not supported on this agent; use guided_regex or response_format")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# Chat fields this agent refuses when set (a 400 naming the field): no way to honour them here.
REFUSED_CHAT_FIELDS = {
    "functions": "the deprecated 'functions' field is not supported; send 'tools'",
    "function_call": "the deprecated 'function_call' field is not supported; send 'tool_choice'",
    "audio": "audio output is not supported on this agent",
    "prediction": "predicted outputs are not supported on this agent",
    "web_search_options": "web search is not supported on this agent",
    "reasoning_effort": "reasoning_effort is not supported on this agent (not a reasoning model)",
    "verbosity": "verbosity is not supported on this agent; bound the answer with max_completion_tokens",
    "moderation": "moderation is not supported on this agent",
}


class ChatCompletionRequest(_GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    # vLLM-style guided decoding (extra_body)
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None

    @field_validator(*REFUSED_CHAT_FIELDS)
    @classmethod
    def _refused(cls, v: Any, info: Any) -> Any:
        if v is not None:
            raise ValueError(REFUSED_CHAT_FIELDS[info.field_name])
        return v

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and set(v) - {"text"}:
            raise ValueError("only the 'text' modality is supported on this agent")
        return v

    @model_validator(mode="after")
    def _limit(self) -> ChatCompletionRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def to_prompt(self, tools_prompt: str | None = None) -> Prompt:
        from agent.serving.tools import render_calls

        messages = []
        if tools_prompt:
            messages.append(Message("system", tools_prompt))
        for m in self.messages:
            text = m.text()
            if m.role == "assistant" and m.tool_calls:
                text = (text + "\n" if text else "") + render_calls(m.tool_calls)
            messages.append(Message(m.role, text))
        return Prompt(messages=tuple(messages))


class CompletionRequest(_GenerationBody):
    prompt: str | list[str]
    echo: StrictBool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("send exactly one prompt string (batched prompts are not supported)")
        return v

    @field_validator("logprobs", "best_of")
    @classmethod
    def _unsupported(cls, v: int | None) -> int | None:
        if v not in (None, 0, 1):
            raise ValueError("not supported on this agent")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported on this agent")
        return v

    def to_prompt(self) -> Prompt:
        return Prompt(text=self.prompt if isinstance(self.prompt, str) else self.prompt[0])


class FeedbackRequest(_Body):
    id: str = Field(min_length=1, max_length=128)
    positive: StrictBool


# --- responses ----------------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    cid: str,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int, fingerprint: str
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
    fingerprint: str,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish,
            }
        ],
    }


def text_chunk(cid: str, created: int, model: str, text: str, finish: str | None, fingerprint: str) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(cid: str, created: int, model: str, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": cid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }
