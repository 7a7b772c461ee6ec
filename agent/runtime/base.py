"""The one interface every inference backend implements.

A :class:`Runtime` loads a model folder (an onnxruntime-genai folder: ``genai_config.json``, ``model.onnx``,
tokenizer files) on an execution provider and returns a :class:`LoadedModel`. Serving, health checks and the
benchmarks only talk to these two classes, so backends are interchangeable per agent.

Generation is blocking native code: callers run :meth:`LoadedModel.generate` in a worker thread and stop it
early by setting the ``cancel`` event, which every backend checks between tokens.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import FailedPrecondition, InvalidArgument, ModelLoadError

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]

# og.Model.device_type -> the short provider names profiles use (shared.profiles.PROVIDERS keys).
DEVICE_TO_PROVIDER = {
    "CPU": "cpu",
    "CUDA": "cuda",
    "DML": "dml",
    "WebGPU": "webgpu",
    "NvTensorRtRtx": "NvTensorRtRtx",
    "QNN": "qnn",
    "OpenVINO": "openvino",
}
# genai_config.json provider_options keys -> short provider names.
CONFIG_TO_PROVIDER = {
    "cuda": "cuda",
    "dml": "dml",
    "webgpu": "webgpu",
    "NvTensorRtRtx": "NvTensorRtRtx",
    "qnn": "qnn",
    "QNN": "qnn",
    "OpenVINO": "openvino",
    "openvino": "openvino",
}


class CapabilityNotSupported(FailedPrecondition):
    """The selected runtime backend cannot do what was asked (e.g. raw completions on Foundry Local)."""

    def __init__(self, runtime: str, capability: str, hint: str = "") -> None:
        self.runtime, self.capability = runtime, capability
        msg = f"runtime '{runtime}' does not support {capability}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class UnknownAdapter(InvalidArgument):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(sorted(known)) or "none loaded"
        super().__init__(f"unknown adapter '{name}' (loaded: {listing}); load it with load_adapter() first")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Prompt:
    """What to generate from: chat ``messages`` (the model's chat template is applied) or raw ``text``."""

    messages: tuple[Message, ...] | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise InvalidArgument("a Prompt needs exactly one of 'messages' or 'text'")

    @classmethod
    def chat(cls, messages: list[dict[str, str]] | list[Message]) -> Prompt:
        return cls(messages=tuple(m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages))

    @classmethod
    def raw(cls, text: str) -> Prompt:
        return cls(text=text)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def user_text(self) -> str:
        """The person's input: the last user message for chat, the whole text otherwise (for telemetry)."""
        if self.text is not None:
            return self.text
        users = [m.content for m in self.messages or () if m.role == "user"]
        return users[-1] if users else ""


def as_prompt(prompt: Prompt | str | list[dict[str, str]]) -> Prompt:
    """A :class:`Prompt` from a Prompt, a raw string, or a list of chat messages."""
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        return Prompt.raw(prompt)
    return Prompt.chat(prompt)


@dataclass(frozen=True)
class GenParams:
    """Decoding settings. ``temperature == 0`` (or ``do_sample`` False) means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    # Keep generating past end-of-sequence until max_new_tokens (benchmarks: equal lengths everywhere).
    ignore_eos: bool = False
    adapter: str | None = None
    # Also compute the prompt's mean per-token NLL from the prefill logits (reported on the last event).
    want_prompt_nll: bool = False
    # Report the sampled token's log-probability and the step's entropy on each TokenEvent (output confidence).
    want_logprobs: bool = False
    # The client asked for logprobs (OpenAI ``logprobs``): a path that cannot give them must not take the request.
    logprobs_required: bool = False
    # Alternatives per token reported with the logprobs (OpenAI ``top_logprobs``, 0-20).
    top_logprobs: int = 0
    # Guided decoding: (kind, data) with kind 'json_schema', 'regex' or 'lark_grammar' (LLGuidance).
    guidance: tuple[str, str] | None = None
    # Tokens per TokenEvent: 1 gives every token its own event (for a consumer that checks each one, e.g. for
    # stop sequences); more lets a runtime put up to that many in one event, at most ``event_interval_s`` after
    # the previous one (None: no time limit). Each token up to the first with text has an event of its own (time to
    # first token). Runtimes may ignore both (one event per token is always correct).
    event_tokens: int = 1
    event_interval_s: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class TokenEvent:
    """One streamed piece of output. The last event has ``finish_reason`` set (and may have empty text)."""

    text: str
    token_count: int = 1
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    prompt_nll: float | None = None
    # With GenParams.want_logprobs: natural-log probability of each token in this event, and the entropy (nats)
    # of the distribution each was sampled from; None when the runtime cannot give them. Unless the client asked
    # for logprobs (logprobs_required), a runtime may report them in blocks: an event (or the final one) then
    # carries the figures of every token since the last event that carried any, in order.
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    # With GenParams.top_logprobs: per token, the most likely (token text, logprob) alternatives.
    top_logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class ModelInfo:
    """Facts about a loaded model that serving and health checks need."""

    model_id: str
    runtime: str
    requested_provider: str
    active_provider: str
    context_length: int
    model_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


class LoadedModel(ABC):
    """A model ready to generate. Thread-safe: several generations may run at once."""

    runtime_name: str = ""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self._closed = threading.Event()

    # --- facts --------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def active_provider(self) -> str:
        """The execution provider actually in use (not the one asked for): detects silent CPU fallback."""
        return self.info.active_provider

    @property
    def context_length(self) -> int:
        return self.info.context_length

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --- text -----------------------------------------------------------------------------------------------
    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model's tokenizer splits it (no template, no special tokens added)."""

    @abstractmethod
    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the model will see for ``prompt`` (chat template applied for messages)."""

    @abstractmethod
    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model sees for ``messages``, with the generation prompt appended."""

    # --- generation ---------------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, prompt: Prompt, params: GenParams, cancel: threading.Event) -> Iterator[TokenEvent]:
        """Stream the completion; stops within one token after ``cancel`` is set (finish_reason 'cancelled').

        ``prompt`` may also be a raw string or a list of chat messages (see :func:`as_prompt`).
        """

    def generate_text(
        self, prompt: Prompt | str | list[dict[str, str]], params: GenParams, cancel: threading.Event | None = None
    ) -> str:
        """Convenience: the whole completion as one string."""
        return "".join(ev.text for ev in self.generate(as_prompt(prompt), params, cancel or threading.Event()))

    @abstractmethod
    def prompt_nll(self, text: str) -> float:
        """Mean per-token negative log-likelihood of ``text`` under the model (drift signal)."""

    # --- guided decoding ----------------------------------------------------------------------------------
    def check_guidance(self, kind: str, data: str) -> None:
        """Raise :class:`InvalidArgument` naming what the backend cannot enforce in ``data`` (a JSON schema,
        regex or Lark grammar); :class:`CapabilityNotSupported` when it cannot guide decoding at all."""
        raise CapabilityNotSupported(self.runtime_name, "guided decoding (response_format, tools, guided_*)")

    # --- adapters -----------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return []

    def load_adapter(self, path: Path, name: str) -> None:
        raise CapabilityNotSupported(self.runtime_name, "runtime LoRA adapters")

    # --- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model. Idempotent."""
        self._closed.set()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Runtime(ABC):
    """A backend: loads model folders into :class:`LoadedModel` objects."""

    name: str = ""

    @abstractmethod
    def load(
        self,
        model_dir: Path,
        provider: str = "cpu",
        *,
        model_id: str | None = None,
        allow_fallback: bool = False,
    ) -> LoadedModel:
        """Load ``model_dir`` on ``provider`` (short name: cpu, cuda, dml, ...).

        When the provider cannot be used, raise :class:`ModelLoadError`, or with ``allow_fallback`` load on
        CPU instead and report ``active_provider == 'cpu'`` (health checks then fail a GPU profile).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources the backend holds."""


# --- helpers shared by backends ---------------------------------------------------------------------------
def read_genai_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "genai_config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir} is not an onnxruntime-genai model folder: genai_config.json is missing "
            "(build one with `python -m onnxruntime_genai.models.builder`)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc}); rebuild the model folder") from exc


def configured_provider(genai_config: dict[str, Any]) -> str:
    """The provider a genai_config.json selects (first provider_options entry; none means CPU)."""
    options = genai_config.get("model", {}).get("decoder", {}).get("session_options", {}).get("provider_options", [])
    for entry in options:
        for key in entry:
            return CONFIG_TO_PROVIDER.get(key, key.lower())
    return "cpu"


def default_model_id(model_dir: Path) -> str:
    return Path(model_dir).resolve().name
