"""Demo traffic: task prompts sent to agents' OpenAI-compatible endpoints over real HTTP, answers scored.

Requests carry the task's output JSON schema as ``response_format`` (``json_schema``), as an application of the
task would: the agent enforces it by guided decoding, so every answer parses (issue #16). ``schema=False``
sends free-form requests instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from controller.factory.tasks import get_task

POOL_SIZE = 3000  # distinct production prompts per variant


@dataclass
class Answer:
    prompt: str
    expected: str
    answer: str
    latency_ms: float
    exact: bool
    error: str = ""


class Traffic:
    """Sends the task's prompts (base or shifted variant) to one agent and scores the answers."""

    def __init__(
        self, base_url: str, task: str = "smart-building", seed: int = 7, stream_start: int = 0, schema: bool = True
    ) -> None:
        self.base_url = base_url
        self.task = get_task(task)
        output_schema = self.task.output_schema() if schema else None
        self.response_format = (
            {"type": "json_schema", "json_schema": {"name": task.replace("-", "_"), "schema": output_schema}}
            if output_schema
            else None
        )
        self.seed = seed
        self.stream_start = stream_start
        self._pools: dict[str, list[dict[str, str]]] = {}
        self._cursor: dict[str, int] = {}
        self.client = httpx.Client(timeout=60)
        self.model_id = ""

    def _post(self, prompt: str) -> tuple[str, float]:
        start = time.perf_counter()
        if not self.model_id:
            self.model_id = self.client.get(f"{self.base_url}/models").json()["data"][0]["id"]
        body = {
            "model": self.model_id,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 64,
            "temperature": 0,
        }
        if self.response_format is not None:
            body["response_format"] = self.response_format
        response = self.client.post(f"{self.base_url}/chat/completions", json=body)
        if response.status_code == 404:  # the agent was updated to another model id
            self.model_id = ""
            return self._post(prompt)
        if response.status_code == 400 and self.response_format is not None and _unsupported(response):
            self.response_format = None  # a runtime that cannot guide decoding (foundry-local): free-form
            return self._post(prompt)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"], (time.perf_counter() - start) * 1000

    def run(self, variant: str, n: int, offset: int = 0) -> list[Answer]:
        """The measurement set: the first ``n`` prompts of the variant's test split (the same on every call)."""
        return self._send(self.task.generate("test", n + offset, seed=self.seed, variant=variant)[offset:])

    def stream(self, variant: str, n: int) -> list[Answer]:
        """Production traffic: the next ``n`` fresh prompts (validation split, disjoint from the measurement
        set), continuing where the last call stopped; ``stream_start`` spreads clients over the pool."""
        if variant not in self._pools:
            self._pools[variant] = self.task.generate("validation", POOL_SIZE, seed=self.seed + 1, variant=variant)
            self._cursor[variant] = self.stream_start % POOL_SIZE
        pool, start = self._pools[variant], self._cursor[variant]
        records = [pool[(start + i) % POOL_SIZE] for i in range(n)]
        self._cursor[variant] = (start + n) % POOL_SIZE
        return self._send(records)

    def _send(self, records: list[dict[str, str]]) -> list[Answer]:
        answers = []
        for rec in records:
            try:
                text, latency = self._post(rec["prompt"])
                exact = self.task.score(text, rec["response"])["exact"]
                answers.append(Answer(rec["prompt"], rec["response"], text, latency, exact))
            except httpx.HTTPError as exc:
                answers.append(Answer(rec["prompt"], rec["response"], "", 0.0, False, str(exc)))
        return answers

    def close(self) -> None:
        self.client.close()


def _unsupported(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return error.get("param") == "response_format" and error.get("code") == "unsupported"


def accuracy(answers: list[Answer]) -> float:
    return sum(a.exact for a in answers) / len(answers) if answers else 0.0


def p50_latency(answers: list[Answer]) -> float:
    values = sorted(a.latency_ms for a in answers if not a.error)
    return values[len(values) // 2] if values else 0.0
