"""The Foundry Local backend: foundry-local-sdk's in-process runtime with the model registered from its folder.

How it works: one process-wide ``FoundryLocalManager`` (the SDK allows one per process) with its app data, model
cache and logs under a data directory we choose; each model folder is registered in the LOCAL catalog under a
fresh ``name:N`` id, loaded, and every request runs in its own ``ChatSession`` (sessions keep turn history, so
they are not shared). Foundry's own web service does not serve locally registered models; our HTTP API fronts
this backend instead.

Limits (raise :class:`CapabilityNotSupported`):
- raw text completions: Foundry chat sessions take messages only (``/v1/completions`` needs ort-genai);
- ``prompt_nll``: the SDK exposes no logits (drift telemetry reports no perplexity on this backend);
- runtime LoRA adapters; ``apply_chat_template`` (Foundry applies the template internally);
- ``ignore_eos``; guided decoding (``response_format``, tools, ``guided_*``: the SDK's RequestOptions take only
  search options, no grammar) and logprobs (no logits).
``count_tokens(text)`` is derived from two preflights (the text, and a one-token text, in a user message): an
approximation (BPE merges across the template boundary can shift it by a token); ``count_prompt_tokens`` is
exact. The active execution provider is the one the folder's
``genai_config.json`` selects (Foundry does not report it for local registrations).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.runtime.base import (
    CapabilityNotSupported,
    GenParams,
    LoadedModel,
    ModelInfo,
    Prompt,
    Runtime,
    TokenEvent,
    as_prompt,
    configured_provider,
    default_model_id,
    read_genai_config,
)
from agent.runtime.registry import register_runtime
from shared.errors import Internal, ModelLoadError
from shared.genai_seed import search_seed

log = logging.getLogger(__name__)

NAME = "foundry-local"
_manager_lock = threading.Lock()
_ids = itertools.count(1)
_PREFIX = "slmops-"


def _sdk() -> Any:
    try:
        import foundry_local_sdk as fl
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError(
            "foundry-local-sdk is not installed; install the foundry extra (`pip install slmops[foundry]`) "
            "or use the ort-genai runtime"
        ) from exc
    return fl


def default_data_dir() -> Path:
    return Path(os.environ.get("SLMOPS_FOUNDRY_DIR", Path(tempfile.gettempdir()) / "slmops-foundry"))


def foundry_manager(data_dir: Path | None = None) -> Any:
    """The process's FoundryLocalManager, initialized on first use with its folders under ``data_dir``."""
    fl = _sdk()
    with _manager_lock:
        if fl.FoundryLocalManager.instance is not None:
            return fl.FoundryLocalManager.instance
        root = Path(data_dir or default_data_dir())
        for sub in ("app", "cache", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        config = fl.Configuration(
            app_name="slmops-agent",
            app_data_dir=str(root / "app"),
            model_cache_dir=str(root / "cache"),
            logs_dir=str(root / "logs"),
            log_level=fl.LogLevel.WARNING,
            disable_nonessential_telemetry=True,
        )
        try:
            fl.FoundryLocalManager.initialize(config)
        except Exception as exc:
            raise ModelLoadError(f"Foundry Local could not start (data dir {root}): {exc}") from exc
        manager = fl.FoundryLocalManager.instance
        _drop_stale_registrations(manager.get_catalog(fl.CatalogType.LOCAL))
        log.info("Foundry Local manager started (data dir %s)", root)
        return manager


def _drop_stale_registrations(catalog: Any) -> None:
    """Registrations persist in the data dir; ones left by a process that died are removed at start."""
    for model in catalog.list_models():
        for variant in model.variants:
            if variant.id.startswith(_PREFIX):
                log.info("Foundry Local: removing stale registration %s", variant.id)
                catalog.unregister_model(variant.id)


def _catalog_id(catalog: Any, model_id: str) -> str:
    """A fresh ``name:N`` id the LOCAL catalog accepts (the same folder may be registered again later)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-") or "model"
    while True:
        candidate = f"{_PREFIX}{name}:{next(_ids)}"
        if catalog.get_model_variant(candidate) is None:
            return candidate


class FoundryLocalModel(LoadedModel):
    runtime_name = NAME

    def __init__(self, fl: Any, catalog: Any, model: Any, info: ModelInfo) -> None:
        super().__init__(info)
        self._fl = fl
        self._catalog = catalog
        self._model = model

    # --- text -----------------------------------------------------------------------------------------------
    def _messages(self, prompt: Prompt) -> list[Any]:
        if prompt.messages is None:
            raise CapabilityNotSupported(
                NAME, "raw text completions", "send chat messages (/v1/chat/completions) or use ort-genai"
            )
        role = self._fl.MessageRole
        roles = {"system": role.SYSTEM, "user": role.USER, "assistant": role.ASSISTANT, "developer": role.DEVELOPER}
        return [self._fl.MessageItem(roles.get(m.role, role.USER), m.content) for m in prompt.messages]

    def _request(self, prompt: Prompt) -> Any:
        request = self._fl.Request()
        for item in self._messages(prompt):
            request.add_item(item)
        return request

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        with self._fl.ChatSession(self._model) as session, self._request(prompt) as request:
            return int(session.preflight_request(request).prompt_tokens)

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        with_text = self.count_prompt_tokens(Prompt.chat([{"role": "user", "content": text}]))
        # Foundry refuses empty content: measure the template around a one-token text (".") instead.
        template_only = self.count_prompt_tokens(Prompt.chat([{"role": "user", "content": "."}])) - 1
        return max(with_text - template_only, 1)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise CapabilityNotSupported(NAME, "rendering the chat template", "Foundry applies it internally")

    # --- generation ---------------------------------------------------------------------------------------
    def _options(self, params: GenParams) -> Any:
        fl = self._fl
        search = fl.SearchOptions(max_output_tokens=params.max_new_tokens, do_sample=not params.greedy)
        if params.greedy:
            search.temperature = 0.0
        else:
            search.temperature, search.top_p = params.temperature, params.top_p
            if params.top_k > 0:
                search.top_k = params.top_k
        search.seed = search_seed(params.seed, sampling=not params.greedy)
        return fl.RequestOptions(search=search)

    def generate(self, prompt: Prompt, params: GenParams, cancel: threading.Event) -> Iterator[TokenEvent]:
        prompt = as_prompt(prompt)
        if params.adapter:
            raise CapabilityNotSupported(NAME, "runtime LoRA adapters", "use the ort-genai runtime")
        if params.ignore_eos:
            raise CapabilityNotSupported(NAME, "ignore_eos")
        if params.guidance is not None:
            raise CapabilityNotSupported(NAME, "guided decoding", "use the ort-genai runtime")
        if params.logprobs_required:
            raise CapabilityNotSupported(NAME, "logprobs (the SDK exposes no logits)", "use the ort-genai runtime")
        fl = self._fl
        yielded = 0
        finish = "length"
        usage = None
        with fl.ChatSession(self._model) as session, self._request(prompt) as request:
            session.set_options(self._options(params))
            session.set_streaming(True)
            with session.process_streaming_request(request) as stream:
                for item in stream:
                    if cancel.is_set():
                        finish = "cancelled"
                        break  # leaving the iterator cancels the native request
                    text = getattr(item, "text", None)
                    if isinstance(text, str):
                        yielded += 1
                        yield TokenEvent(text=text)
                if finish != "cancelled":
                    with stream.final_response as final:
                        reason = final.finish_reason
                        usage = final.get_usage()
                    if reason == fl.FinishReason.ERROR:
                        raise Internal(f"Foundry Local reported an error generating with {self.model_id}")
                    finish = "length" if reason == fl.FinishReason.LENGTH else "stop"
        completion = usage.completion_tokens if usage is not None else yielded
        yield TokenEvent(
            text="",
            token_count=max(completion - yielded, 0),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
        )

    def prompt_nll(self, text: str) -> float:
        raise CapabilityNotSupported(NAME, "prompt_nll (the SDK exposes no logits)", "use ort-genai for drift NLL")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        catalog_id = self.info.extra.get("catalog_id", "")
        try:
            self._model.unload()
            self._catalog.unregister_model(catalog_id)
        except Exception as exc:  # unloading at shutdown must not raise
            log.warning("Foundry Local: unloading %s failed: %s", catalog_id, exc)
        log.info("closed Foundry Local model %s (%s)", self.model_id, catalog_id)


@register_runtime(NAME)
class FoundryLocalRuntime(Runtime):
    """Serves model folders through Foundry Local's in-process runtime."""

    name = NAME

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir else None

    def load(
        self,
        model_dir: Path,
        provider: str = "cpu",
        *,
        model_id: str | None = None,
        allow_fallback: bool = False,
    ) -> FoundryLocalModel:
        fl = _sdk()
        model_dir = Path(model_dir).resolve()
        genai_config = read_genai_config(model_dir)
        configured = configured_provider(genai_config)
        if provider != configured and not allow_fallback:
            raise ModelLoadError(
                f"{model_dir} is built for provider '{configured}' but '{provider}' was asked; Foundry Local "
                "uses the provider in genai_config.json: install the variant built for this profile"
            )
        manager = foundry_manager(self.data_dir)
        catalog = manager.get_catalog(fl.CatalogType.LOCAL)
        catalog_id = _catalog_id(catalog, model_id or default_model_id(model_dir))
        try:
            with fl.ModelInfoBuilder() as metadata:
                metadata.set_string_property("task", "chat-completion")
                model = catalog.register_model(model_path=str(model_dir), model_id=catalog_id, metadata=metadata)
            model.load()
        except Exception as exc:
            raise ModelLoadError(f"Foundry Local could not load {model_dir}: {exc}") from exc
        runtime_info = model.info.runtime
        reported = (runtime_info.execution_provider if runtime_info else "") or configured
        active = reported.removesuffix("ExecutionProvider").lower() if reported.endswith("Provider") else reported
        ctx = model.context_length or int(genai_config.get("model", {}).get("context_length") or 0)
        info = ModelInfo(
            model_id=model_id or default_model_id(model_dir),
            runtime=self.name,
            requested_provider=provider,
            active_provider=active,
            context_length=int(ctx),
            model_dir=model_dir,
            extra={"catalog_id": catalog_id},
        )
        log.info("Foundry Local loaded %s as %s on %s", model_dir, catalog_id, active)
        return FoundryLocalModel(fl, catalog, model, info)
