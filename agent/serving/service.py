"""The serving core the HTTP app fronts: model slot, admission queue, validation, metrics and callbacks.

An agent builds one :class:`Serving`, swaps models into ``serving.slot``, reports health with
:meth:`Serving.set_health`, and receives one record per finished request through ``on_request``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.runtime.base import CapabilityNotSupported, GenParams, LoadedModel, Prompt, read_genai_config
from agent.serving.errors import ContextLengthExceeded, ModelNotFound, RequestFieldError
from agent.serving.metrics import ServingMetrics
from agent.serving.model_slot import ModelHandle, ModelSlot
from agent.serving.queue import WorkQueue
from agent.serving.records import RequestRecord
from shared.errors import ModelLoadError, NotFound

log = logging.getLogger(__name__)


@dataclass
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    workers: int = 2
    max_queue: int = 16
    profile: str = ""
    # max_tokens when the request does not say (capped by the room left in the context).
    default_max_tokens: int = 256
    # The OpenAI default is 1.0; agents serving a structured task may prefer 0 (greedy).
    default_temperature: float = 1.0
    # Share of requests whose prompt NLL is computed (runtimes that expose logits). Off by default: drift no longer
    # watches it (students learn answer tokens only, so it sits near ln(vocabulary)); confidence signals replaced it.
    nll_sample_rate: float = 0.0
    # Streaming: at most one SSE chunk per this many ms after the first (0 = one chunk per token). Each chunk costs
    # the model ~1-1.5 ms on a 2-core CPU (the client's parse and the loop's send take a core from onnxruntime's
    # threads): 15 ms streamed at 0.92-0.94x in-process, 50 ms at 1.03x (A/B, docs/serving.md); 20 updates a
    # second still reads as smooth, and the first token with text is never held back.
    stream_interval_ms: float = 50.0
    # Completion ids remembered for POST /v1/feedback.
    feedback_ids: int = 10_000
    # Largest request body (413 beyond; agent/serving/limits.py). 1 MiB holds a 128k-token context of text even
    # JSON-escaped (about 6 bytes a token for \u-escaped CJK), far beyond the contexts edge models serve.
    max_body_bytes: int = 1 << 20
    # A request's head, then its body, must each arrive within this many seconds (closed / 408 beyond); an
    # idle connection is closed after it too. 15 s leaves a 1 MiB body 70 KB/s.
    read_timeout_s: float = 15.0
    # GET /metrics needs the API key: None = when one is set; False = open even then.
    metrics_require_key: bool | None = None
    # The served task's output JSON schema (profile or model version); with enforce_schema, chat requests that
    # set no output constraint of their own are guided by it (response_format {"type": "text"} opts out).
    output_schema: dict[str, Any] | None = None
    enforce_schema: bool = False
    # Per-token logprob and entropy for every request's record (output-confidence telemetry).
    record_logprobs: bool = True


def task_schema(manifest: Any, profile: Any) -> tuple[dict[str, Any] | None, bool]:
    """The output schema to serve and whether to enforce it: the model version's, else the profile's (a
    ``common_pb2.Profile`` with ``output_schema_json``/``enforce_schema``, or None)."""
    schema = getattr(manifest, "output_schema", None)
    enforce = bool(getattr(manifest, "enforce_schema", False))
    text = getattr(profile, "output_schema_json", "") if profile is not None else ""
    if schema is None and text:
        try:
            schema = json.loads(text)
        except ValueError:
            log.warning("the profile's output_schema_json is not JSON; serving without a task schema")
    if profile is not None and getattr(profile, "enforce_schema", False):
        enforce = True
    schema = schema if isinstance(schema, dict) else None
    if enforce and schema is None:
        log.warning("enforce_schema is set but neither the model version nor the profile has an output schema")
    return schema, enforce


@dataclass
class HealthState:
    ok: bool | None = None  # None: no check has run yet
    message: str = "no health check has run yet"
    details: dict[str, Any] | None = None


def _vocab_size(model: LoadedModel) -> float:
    """The model's vocabulary size (from its genai_config.json; remembered in ``info.extra``), inf if unknown.

    onnxruntime-genai refuses a ``top_k`` above it, and a cut at or above it keeps every token anyway."""
    extra = model.info.extra
    if "vocab_size" not in extra:
        try:
            extra["vocab_size"] = read_genai_config(model.info.model_dir).get("model", {}).get("vocab_size")
        except (ModelLoadError, OSError, AttributeError):
            extra["vocab_size"] = None
    vocab = extra["vocab_size"]
    return float(vocab) if isinstance(vocab, int) and vocab > 0 else math.inf


class Serving:
    def __init__(
        self,
        config: ServingConfig | None = None,
        slot: ModelSlot | None = None,
        *,
        on_request: Callable[[dict[str, Any]], None] | None = None,
        on_feedback: Callable[[dict[str, Any]], None] | None = None,
        require_health: bool = True,
    ) -> None:
        self.config = config or ServingConfig()
        self.slot = slot or ModelSlot()
        self.metrics = ServingMetrics(self.config.profile)
        self.queue = WorkQueue(self.config.workers, self.config.max_queue)
        self.on_request = on_request
        self.on_feedback = on_feedback
        # /readyz needs a passed health check unless require_health is False (then a loaded model suffices).
        self.require_health = require_health
        self.health = HealthState()
        # The agent's standing with its controller, shown on /readyz (see set_controller_state).
        self.controller_state: dict[str, str] = {"state": "connected", "message": ""}
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._ids_lock = threading.Lock()
        self.slot.on_swap(self._on_swap)
        if self.slot.current is not None:
            self._on_swap(self.slot.current)

    # --- model --------------------------------------------------------------------------------------------
    def _on_swap(self, handle: ModelHandle) -> None:
        self.metrics.set_model(handle.model.model_id, handle.version)
        self.health = HealthState()

    def swap(
        self,
        model: LoadedModel,
        version: str = "",
        *,
        wait_s: float | None = 0.0,
        health_ok: bool | None = None,
        health_message: str = "",
    ) -> ModelHandle | None:
        """Serve ``model`` (see :meth:`ModelSlot.swap`). Pass the result of a health check already run on it
        (``health_ok``) so ``/readyz`` stays ready across the swap."""
        old = self.slot.swap(model, version, wait_s=0.0)
        if health_ok is not None:
            self.set_health(health_ok, health_message)
        if old is not None and (wait_s is None or wait_s > 0):
            old.closed.wait(wait_s)
        return old

    def served_ids(self) -> list[str]:
        handle = self.slot.current
        if handle is None:
            return []
        base = handle.model.model_id
        return [base, *(f"{base}:{a}" for a in handle.model.adapters)]

    def resolve_model(self, requested: str, model: LoadedModel) -> str | None:
        """The adapter a request's ``model`` field names (None for the base model)."""
        base = model.model_id
        if requested == base:
            return None
        if requested.startswith(base + ":") and requested[len(base) + 1 :] in model.adapters:
            return requested[len(base) + 1 :]
        raise ModelNotFound(requested, self.served_ids())

    # --- readiness ----------------------------------------------------------------------------------------
    def set_health(self, ok: bool, message: str = "", details: dict[str, Any] | None = None) -> None:
        self.health = HealthState(ok, message or ("healthy" if ok else "unhealthy"), details)
        self.metrics.set_health(ok)

    def set_controller_state(self, state: str, message: str = "") -> None:
        """Record the agent's standing with its controller (e.g. ``credentials_rejected``) for ``/readyz``.

        It does not change readiness: the loaded model keeps serving whatever the controller says."""
        if state != self.controller_state["state"]:
            log.info("controller state: %s%s", state, f" ({message})" if message else "")
        self.controller_state = {"state": state, "message": message}

    def readiness(self) -> tuple[bool, str]:
        if not self.slot.loaded:
            return False, "no model loaded"
        if not self.require_health:
            return True, "model loaded"
        if self.health.ok is None:
            return False, self.health.message
        return bool(self.health.ok), self.health.message

    # --- validation -----------------------------------------------------------------------------------------
    def build_params(
        self,
        model: LoadedModel,
        prompt: Prompt,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float,
        top_k: int,
        seed: int | None,
        ignore_eos: bool,
        adapter: str | None,
        prompt_param: str,
        guidance: tuple[str, str] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> tuple[GenParams, int]:
        """Decoding params and the prompt's token count; 400s for prompts/limits the model cannot take."""
        try:
            prompt_tokens = model.count_prompt_tokens(prompt)
        except CapabilityNotSupported as exc:
            raise RequestFieldError(prompt_param, exc.message, code="unsupported") from exc
        if prompt_tokens == 0:
            raise RequestFieldError(
                prompt_param, f"the {prompt_param} field is empty after tokenization; send some text"
            )
        ctx = model.context_length
        if prompt_tokens >= ctx:
            raise ContextLengthExceeded(
                prompt_param,
                f"This model's maximum context length is {ctx} tokens; the {prompt_param} use {prompt_tokens} "
                "tokens. Shorten them.",
            )
        room = ctx - prompt_tokens
        if max_tokens is not None and max_tokens > room:
            raise ContextLengthExceeded(
                "max_tokens",
                f"max_tokens is {max_tokens} but only {room} tokens are left: this model's maximum context "
                f"length is {ctx} and the {prompt_param} use {prompt_tokens}. Lower max_tokens.",
            )
        if ignore_eos and model.runtime_name == "foundry-local":
            raise RequestFieldError("ignore_eos", "ignore_eos is not supported by the foundry-local runtime")
        want_nll = self.config.nll_sample_rate > 0 and random.random() < self.config.nll_sample_rate
        params = GenParams(
            max_new_tokens=max_tokens if max_tokens is not None else min(self.config.default_max_tokens, room),
            temperature=self.config.default_temperature if temperature is None else temperature,
            top_p=top_p,
            top_k=0 if top_k >= _vocab_size(model) else top_k,  # the whole vocabulary: no top-k cut
            seed=seed,
            ignore_eos=ignore_eos,
            adapter=adapter,
            want_prompt_nll=want_nll,
            want_logprobs=self.config.record_logprobs,
            logprobs_required=logprobs,
            top_logprobs=top_logprobs,
            guidance=guidance,
        )
        return params, prompt_tokens

    def set_output_schema(self, schema: dict[str, Any] | None, enforce: bool) -> None:
        """The served task's output schema and whether requests are guided by it by default."""
        self.config.output_schema, self.config.enforce_schema = schema, enforce and schema is not None

    # --- records and feedback -----------------------------------------------------------------------------
    def finish(self, rec: RequestRecord) -> None:
        """Called on the worker thread when a request ends."""
        self.metrics.observe(rec)
        self.metrics.set_queue(self.queue.depth, self.queue.running)
        if not rec.error and not rec.cancelled:
            with self._ids_lock:
                self._ids[rec.request_id] = (rec.model_id, rec.version)
                while len(self._ids) > self.config.feedback_ids:
                    self._ids.popitem(last=False)
        if self.on_request is not None:
            self.on_request(rec.as_dict())

    def feedback(self, completion_id: str, positive: bool) -> dict[str, Any]:
        with self._ids_lock:
            known = self._ids.get(completion_id)
        if known is None:
            raise NotFound(
                f"no recent completion with id '{completion_id}' on this agent (ids are kept for the last "
                f"{self.config.feedback_ids} completions)"
            )
        model_id, version = known
        self.metrics.feedback.labels(
            **self.metrics.labels(model_id, version), kind="positive" if positive else "negative"
        ).inc()
        event = {"id": completion_id, "positive": positive, "model_id": model_id, "version": version}
        if self.on_feedback is not None:
            try:
                self.on_feedback(event)
            except Exception:
                log.exception("the feedback callback failed for %s", completion_id)
        return event

    def close(self, timeout: float = 10.0) -> None:
        self.queue.stop(timeout)
        self.slot.clear(wait_s=timeout)
