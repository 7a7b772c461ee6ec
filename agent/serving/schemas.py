"""Request bodies of the OpenAI-compatible API (pydantic), and the response/chunk builders.

Unknown top-level fields are ignored, not refused: the ``openai`` client sends whatever its caller passes, and
its list of fields grows with every release (``store``, ``metadata``, ``service_tier``, ``prompt_cache_key``,
``verbosity``, ...; other OpenAI clients send their own), so refusing unknown names would break clients that
work against OpenAI itself. Ignoring them costs no unbounded buffering: the whole body is capped before it is
parsed (``max_body_bytes``, see :mod:`agent.serving.limits`). Known fields we cannot honour (``n > 1``, tools,
logprobs, echo) are refused with a 400 naming them.

Types are strict where a lax reading would change the request's meaning or reach native code unchecked:
booleans must be JSON ``true``/``false`` (``"stream": "yes"`` is a 400 naming ``stream``, not a stream);
floats must be finite; integers that go to onnxruntime-genai as C++ ``int`` (``seed``, ``top_k``,
``max_tokens``) are bounded to what it takes, so an out-of-range value is a 400 naming the field instead of a
failed cast at generation time. Extensions: ``ignore_eos`` and ``top_k`` (as in vLLM; pass them with the
client's ``extra_body``).
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
    # extensions
    ignore_eos: StrictBool = False
    top_k: int = Field(default=0, ge=0, le=MAX_INT)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported on this agent")
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


class ChatCompletionRequest(_GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    logprobs: StrictBool | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported on this agent")
        return v

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v:
            raise ValueError("tool calling is not supported on this agent")
        return v

    @model_validator(mode="after")
    def _limit(self) -> ChatCompletionRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def to_prompt(self) -> Prompt:
        return Prompt(messages=tuple(Message(m.role, m.text()) for m in self.messages))


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
    cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int, fingerprint: str
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
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
    cid: str, created: int, model: str, delta: dict[str, str], finish: str | None, fingerprint: str
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
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
