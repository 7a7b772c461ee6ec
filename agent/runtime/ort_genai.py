"""The onnxruntime-genai backend (the default): in-process ``og.Model`` + ``og.Generator`` per request, or
continuous batching through ``og.Engine`` (:mod:`agent.runtime.og_engine`).

``batching`` (runtime option): ``"off"``: one ``og.Generator`` per request (every feature: logits for
logprobs/NLL, seeded sampling, adapters); ``"engine"``: every request the engine can serve goes through it;
``"auto"``: a request goes to the engine only while another one is generating, so a lone request keeps the
generator path's logprobs (output-confidence telemetry) and concurrent ones are batched. Default (None): ``off``
on CPU, ``auto`` on an accelerator. Measured on this project's 2-core CPU VM (bench/serve.py): the CPU
static-batch engine gives no aggregate speed-up on a 20 M-parameter int4 model (MatMulNBits decode is
compute-bound: a batch of 8 steps ~8x slower) and only amortizes per-step overhead on a tiny one, while it
costs seeded sampling and the telemetry logprobs of the requests it serves.
Guided decoding (LLGuidance): ``GenParams.guidance`` -> ``GeneratorParams.set_guidance`` / ``TurnOptions``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import og_loop
from agent.runtime.base import (
    DEVICE_TO_PROVIDER,
    GenParams,
    LoadedModel,
    ModelInfo,
    Prompt,
    Runtime,
    TokenEvent,
    UnknownAdapter,
    as_prompt,
    default_model_id,
    read_genai_config,
)
from agent.runtime.logprobs import Confidence
from agent.runtime.og_engine import EngineBatcher
from agent.runtime.registry import register_runtime
from shared.errors import InvalidArgument, ModelLoadError
from shared.genai_seed import GREEDY_SEED, search_seed

log = logging.getLogger(__name__)

# Rows of prompt logits turned into log-probabilities at once (bounds the extra memory of prompt_nll).
_NLL_ROWS = 64
# Prompts whose token ids are kept between counting them (admission) and generating from them.
_RECENT_PROMPTS = 32
# Guidance specs checked (kind, data) -> error message or None.
_CHECKED_GUIDANCE = 256
BATCHING_MODES = ("off", "engine", "auto")


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError(
            "onnxruntime-genai is not installed; install the agent extra (`pip install slmops[agent]`)"
        ) from exc
    og_loop.cache_array_dtypes()  # before its first float array (get_logits per token: see og_loop)
    return og


def mean_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ``ids[1:]`` given logits[t] predicting ids[t+1] (logits: [T, V])."""
    total, count = 0.0, 0
    targets = ids[1:]
    for start in range(0, len(targets), _NLL_ROWS):
        rows = np.asarray(logits[start : start + len(targets[start : start + _NLL_ROWS])], dtype=np.float32)
        peak = rows.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
        picked = rows[np.arange(len(rows)), targets[start : start + len(rows)]]
        total += float((logz - picked).sum())
        count += len(rows)
    return total / count


class OrtGenaiModel(LoadedModel):
    runtime_name = "ort-genai"

    def __init__(self, og: Any, model: Any, info: ModelInfo, genai_config: dict[str, Any]) -> None:
        super().__init__(info)
        self._og = og
        self._model = model
        self._tokenizer = og.Tokenizer(model)
        self._eos = set(int(t) for t in self._tokenizer.eos_token_ids)
        self._config = genai_config
        self._adapters: Any = None
        self._adapter_names: list[str] = []
        self._adapter_lock = threading.Lock()
        # Prompt -> token ids of the last few prompts counted (serving counts at admission, then generates):
        # the chat template and the tokenizer run once per request, not twice.
        self._recent_ids: OrderedDict[Prompt, np.ndarray] = OrderedDict()
        self._ids_lock = threading.Lock()
        self._guidance_checked: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self.batching = "off"
        self._batcher: EngineBatcher | None = None
        self._in_flight = 0

    def enable_batching(self, mode: str) -> None:
        """Start the ``og.Engine`` scheduler (``engine``/``auto``); ``off`` keeps the generator path only."""
        self.batching = check_batching(mode)
        if mode != "off" and self._batcher is None:
            self._batcher = EngineBatcher(self._og, self._model, self._tokenizer, self._eos, self.context_length)
            self.info.extra["max_batch"] = self._batcher.max_batch

    def _use_engine(self, params: GenParams) -> bool:
        if self._batcher is None or not EngineBatcher.can_serve(params):
            return False
        return self.batching == "engine" or self._in_flight > 1  # counts this request

    # --- guided decoding ----------------------------------------------------------------------------------
    def check_guidance(self, kind: str, data: str) -> None:
        key = (kind, data)
        with self._ids_lock:
            known = key in self._guidance_checked
            error = self._guidance_checked.get(key)
        if not known:
            error = None
            try:
                gp = self._og.GeneratorParams(self._model)
                gp.set_search_options(max_length=2)
                gp.set_guidance(kind, data)
                self._og.Generator(self._model, gp)  # LLGuidance compiles the grammar here
            except Exception as exc:
                error = str(exc)
            with self._ids_lock:
                self._guidance_checked[key] = error
                while len(self._guidance_checked) > _CHECKED_GUIDANCE:
                    self._guidance_checked.popitem(last=False)
        if error:
            raise InvalidArgument(f"the {kind} cannot be enforced by this runtime (LLGuidance): {error}")

    # --- text -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text), dtype=np.int32)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text)) if text else 0

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self._tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)

    def render(self, prompt: Prompt) -> str:
        if prompt.messages is not None:
            return self.apply_chat_template([m.as_dict() for m in prompt.messages])
        return prompt.text or ""

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return len(self._prompt_ids(prompt, keep=True))

    def _prompt_ids(self, prompt: Prompt, *, keep: bool) -> np.ndarray:
        """The prompt's token ids; ``keep`` remembers them for the generation that usually follows a count."""
        with self._ids_lock:
            ids = self._recent_ids.pop(prompt, None)
        if ids is None:
            ids = self.encode(self.render(prompt))
        if keep and len(ids) < self.context_length:  # a prompt that cannot run is refused, not remembered
            with self._ids_lock:
                self._recent_ids[prompt] = ids
                while len(self._recent_ids) > _RECENT_PROMPTS:
                    self._recent_ids.popitem(last=False)
        return ids

    # --- generation ---------------------------------------------------------------------------------------
    def _params(self, prompt_len: int, params: GenParams) -> Any:
        max_length = min(prompt_len + params.max_new_tokens, self.context_length)
        options: dict[str, Any] = {"max_length": max_length, "do_sample": not params.greedy}
        if not params.greedy:
            options["temperature"] = params.temperature
            options["top_p"] = params.top_p
            if params.top_k > 0:
                options["top_k"] = params.top_k
        options["random_seed"] = search_seed(params.seed, sampling=not params.greedy)
        if params.ignore_eos:
            options["min_length"] = max_length
        gp = self._og.GeneratorParams(self._model)
        gp.set_search_options(**options)
        if params.guidance is not None:
            gp.set_guidance(*params.guidance)
        return gp

    def generate(self, prompt: Prompt, params: GenParams, cancel: threading.Event) -> Iterator[TokenEvent]:
        prompt = as_prompt(prompt)
        ids = self._prompt_ids(prompt, keep=False)
        if len(ids) == 0:
            raise InvalidArgument("the prompt is empty after tokenization; send some text")
        if len(ids) >= self.context_length:
            raise InvalidArgument(
                f"the prompt has {len(ids)} tokens; this model's context is {self.context_length} tokens"
            )
        with self._ids_lock:  # worker threads start requests at once: count them under a lock
            self._in_flight += 1
        try:
            if self._use_engine(params):
                assert self._batcher is not None
                yield from self._batcher.generate(ids, params, cancel)
            else:
                yield from self._generate(ids, params, cancel)
        finally:
            with self._ids_lock:
                self._in_flight -= 1

    def _generate(self, ids: np.ndarray, params: GenParams, cancel: threading.Event) -> Iterator[TokenEvent]:
        generator = self._og.Generator(self._model, self._params(len(ids), params))
        if params.adapter:
            self._activate_adapter(generator, params.adapter)
        generator.append_tokens(ids)
        nll = None
        if params.want_prompt_nll and len(ids) > 1:
            nll = mean_nll(np.asarray(generator.get_output("logits"))[0], ids)
        decode = self._tokenizer.create_stream().decode
        eos = frozenset() if params.ignore_eos else self._eos
        want = params.want_logprobs or params.logprobs_required
        stats = Confidence(generator, params, self._tokenizer) if want else None
        budget = min(params.max_new_tokens, self.context_length - len(ids))
        if params.event_tokens > 1 and not params.logprobs_required:
            most, interval = params.event_tokens, params.event_interval_s
            finish = yield from og_loop.coalesced(generator, decode, cancel, eos, budget, stats, most, interval)
        else:
            finish = yield from og_loop.per_token(generator, decode, cancel, eos, budget, stats)
        last = TokenEvent(text="", token_count=0, finish_reason=finish, prompt_tokens=len(ids), prompt_nll=nll)  # type: ignore[arg-type]
        if stats is not None:
            stats.flush(last)
        yield last

    def prompt_nll(self, text: str) -> float:
        ids = self.encode(text)[-(self.context_length - 1) :]
        if len(ids) < 2:
            raise InvalidArgument("prompt_nll needs a text of at least 2 tokens")
        gp = self._og.GeneratorParams(self._model)
        gp.set_search_options(max_length=len(ids) + 1, random_seed=GREEDY_SEED)
        generator = self._og.Generator(self._model, gp)
        generator.append_tokens(ids)
        return mean_nll(np.asarray(generator.get_output("logits"))[0], ids)

    # --- adapters -----------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapter_names)

    def load_adapter(self, path: Path, name: str) -> None:
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"adapter file {path} does not exist (expected a .onnx_adapter file)")
        with self._adapter_lock:
            if self._adapters is None:
                self._adapters = self._og.Adapters(self._model)
            try:
                self._adapters.load(str(path), name)
            except Exception as exc:
                raise ModelLoadError(f"adapter {path} could not be loaded as '{name}': {exc}") from exc
            if name not in self._adapter_names:
                self._adapter_names.append(name)
        log.info("loaded adapter %s from %s into %s", name, path, self.model_id)

    def _activate_adapter(self, generator: Any, name: str) -> None:
        if name not in self._adapter_names:
            raise UnknownAdapter(name, self._adapter_names)
        generator.set_active_adapter(self._adapters, name)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self._adapters = None
        with self._ids_lock:
            self._recent_ids.clear()
        self._tokenizer = None
        self._model = None
        log.info("closed model %s", self.model_id)


def check_batching(mode: str) -> str:
    if mode not in BATCHING_MODES:
        raise InvalidArgument(f"batching must be one of {', '.join(BATCHING_MODES)}, not '{mode}'")
    return mode


@register_runtime("ort-genai")
class OrtGenaiRuntime(Runtime):
    """Loads onnxruntime-genai folders in this process."""

    name = "ort-genai"

    def __init__(self, batching: str | None = None, max_batch: int = 8) -> None:
        self.batching = check_batching(batching) if batching is not None else None
        self.max_batch = max_batch

    def load(
        self,
        model_dir: Path,
        provider: str = "cpu",
        *,
        model_id: str | None = None,
        allow_fallback: bool = False,
    ) -> OrtGenaiModel:
        og = _import_og()
        model_dir = Path(model_dir)
        genai_config = read_genai_config(model_dir)
        started = time.perf_counter()
        mode = self.batching or ("off" if provider == "cpu" else "auto")
        try:
            model = og.Model(self._config(og, model_dir, genai_config, provider, mode))
        except Exception as exc:
            if provider == "cpu" or not allow_fallback:
                raise ModelLoadError(
                    f"onnxruntime-genai could not load {model_dir} on provider '{provider}': {exc}"
                ) from exc
            log.warning("provider %s unavailable for %s (%s); falling back to CPU", provider, model_dir, exc)
            try:
                mode = self.batching or "off"
                model = og.Model(self._config(og, model_dir, genai_config, "cpu", mode))
            except Exception as exc2:
                raise ModelLoadError(f"onnxruntime-genai could not load {model_dir}: {exc2}") from exc2
        device = str(model.device_type)
        active = DEVICE_TO_PROVIDER.get(device, device.lower())
        ctx = int(genai_config.get("model", {}).get("context_length") or genai_config["search"]["max_length"])
        info = ModelInfo(
            model_id=model_id or default_model_id(model_dir),
            runtime=self.name,
            requested_provider=provider,
            active_provider=active,
            context_length=ctx,
            model_dir=model_dir,
            extra={"model_type": str(model.type), "vocab_size": genai_config.get("model", {}).get("vocab_size")},
        )
        log.info(
            "loaded %s (%s) on %s in %.2fs (asked for %s)",
            info.model_id,
            model_dir,
            active,
            time.perf_counter() - started,
            provider,
        )
        loaded = OrtGenaiModel(og, model, info, genai_config)
        if mode != "off":
            try:
                loaded.enable_batching(mode)
            except Exception as exc:  # a folder the engine cannot schedule: the generator path serves it
                log.warning("og.Engine unavailable for %s (%s); serving without batching", model_dir, exc)
        return loaded

    def _config(self, og: Any, model_dir: Path, genai_config: dict[str, Any], provider: str, batching: str) -> Any:
        config = og.Config(str(model_dir))
        if batching != "off" and "engine" not in genai_config:  # the folder's own wins
            config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": self.max_batch}}}))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        return config
