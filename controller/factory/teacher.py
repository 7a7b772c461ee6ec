"""Teachers that answer prompts: a local Hugging Face folder, or an OpenAI-compatible chat endpoint.

The endpoint teacher sends concurrent ``POST {base_url}/chat/completions`` requests, retries transient
failures (connection errors, 408/409/429/5xx) with exponential backoff, and caches every answer on disk by
``sha256(messages + model + temperature + max_tokens)`` so a rerun asks nothing it already asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.factory.tasks.datasets import Example
from shared.errors import Cancelled, FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
OnProgress = Callable[[int, int], None]


class TeacherUnavailable(Unavailable):
    """The teacher endpoint cannot be reached or keeps failing; the message names its URL."""


@dataclass
class EndpointSettings:
    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise FailedPrecondition(
                f"the teacher endpoint's API key is read from environment variable '{self.api_key_env}', "
                "which is not set in the controller's environment"
            )
        return key


class AnswerCache:
    """One small JSON file per answer under ``root/<key[:2]>/<key>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(messages: list[dict[str, str]], model: str, temperature: float, max_tokens: int) -> str:
        payload = json.dumps(
            {"messages": messages, "model": model, "temperature": temperature, "max_tokens": max_tokens},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())["answer"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, answer: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"answer": answer}, ensure_ascii=False))
        tmp.replace(path)


class EndpointTeacher:
    """Answers with an OpenAI-compatible ``/chat/completions`` endpoint; counts requests and cache hits."""

    def __init__(self, settings: EndpointSettings, cache_dir: Path | None) -> None:
        self.settings = settings
        self.cache = AnswerCache(cache_dir) if cache_dir else None
        self.requests = 0
        self.cache_hits = 0
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = settings.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=settings.timeout_s, headers=headers)

    def close(self) -> None:
        self._client.close()

    def probe(self) -> None:
        """Fail fast, naming the URL, when nothing answers at the endpoint (any HTTP reply counts as up)."""
        url = self.settings.base_url.rstrip("/") + "/models"
        try:
            self._client.get(url, timeout=min(5.0, self.settings.timeout_s))
        except httpx.HTTPError as exc:
            raise TeacherUnavailable(
                f"teacher endpoint {self.settings.base_url} is not reachable ({type(exc).__name__}: {exc}); "
                "start it or fix teacher.base_url"
            ) from exc

    def _ask(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        body = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            **self.settings.extra_body,
        }
        last = ""
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                with self._lock:
                    self.requests += 1
                resp = self._client.post(self.settings.url, json=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:
                raise InvalidArgument(
                    f"teacher endpoint {self.settings.url} refused the request "
                    f"(HTTP {resp.status_code}: {resp.text[:300]}); check teacher.model and the API key"
                )
            try:
                return resp.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise InvalidArgument(
                    f"teacher endpoint {self.settings.url} sent a reply that is not a chat completion: "
                    f"{resp.text[:300]}"
                ) from exc
        raise TeacherUnavailable(
            f"teacher endpoint {self.settings.url} failed {self.settings.max_retries + 1} times; last error: {last}"
        )

    def answer(
        self,
        examples: Sequence[Example],
        temperature: float = 0.0,
        max_tokens: int = 128,
        on_progress: OnProgress = lambda _d, _t: None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> list[str]:
        answers: list[str | None] = [None] * len(examples)
        todo: list[tuple[int, str]] = []
        for i, ex in enumerate(examples):
            key = AnswerCache.key(ex.messages, self.settings.model, temperature, max_tokens)
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                answers[i] = hit
                self.cache_hits += 1
            else:
                todo.append((i, key))
        if todo:
            self.probe()
        done = len(examples) - len(todo)
        on_progress(done, len(examples))

        stop = threading.Event()

        def work(item: tuple[int, str]) -> tuple[int, str]:
            if stop.is_set() or is_cancelled():
                raise Cancelled("job cancelled while asking the teacher")
            i, key = item
            text = self._ask(examples[i].messages, temperature, max_tokens)
            if self.cache:
                self.cache.put(key, text)
            return i, text

        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency))
        try:
            futures = [pool.submit(work, item) for item in todo]
            for fut in as_completed(futures):
                i, text = fut.result()  # the first failure ends the whole batch
                answers[i] = text
                done += 1
                if done % 16 == 0 or done == len(examples):
                    on_progress(done, len(examples))
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        return [a or "" for a in answers]


class LocalTeacher:
    """Answers with a local Hugging Face causal LM (batched, left-padded generation)."""

    def __init__(self, folder: Path, batch_size: int = 32, device: str = "auto") -> None:
        from controller.factory.modeling import load_causal_lm

        self.folder = Path(folder)
        self.model, self.tokenizer = load_causal_lm(self.folder)
        self.batch_size = batch_size
        self.device = device

    def answer(
        self,
        examples: Sequence[Example],
        temperature: float = 0.0,
        max_tokens: int = 128,
        on_progress: OnProgress = lambda _d, _t: None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> list[str]:
        from controller.factory.training.generate import generate_answers

        def relay(done: int, total: int) -> None:
            on_progress(done, total)
            if is_cancelled():
                raise Cancelled("job cancelled while the teacher was answering")

        return generate_answers(
            self.model,
            self.tokenizer,
            examples,
            max_new_tokens=max_tokens,
            temperature=temperature,
            batch_size=self.batch_size,
            device=self.device,
            on_batch=relay,
        )
