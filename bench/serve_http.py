"""Serving benchmark, the HTTP side (see serve.py): the agent's API in its own process, driven by the official
``openai`` client; single-stream runs interleaved with the in-process baseline, and concurrent clients."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_batching import _p95, run_clients

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "dim the lights in meeting room 21 to 90% and close the blinds at 09:45"}]


# --- HTTP --------------------------------------------------------------------------------------------------------
def start_server(og_dir: Path, workers: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "agent.serving", "--model", str(og_dir), "--model-id", "bench", "--port", "0"]
    cmd += ["--workers", str(workers), "--max-queue", "32", "--temperature", "0", "--version", "bench", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"the serving process did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def request(client: Any, tokens: int, stream: bool) -> tuple[float, float | None, int]:
    start = time.perf_counter()
    kw = {
        "model": "bench",
        "messages": MESSAGES,
        "max_tokens": tokens,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    if not stream:
        out = client.chat.completions.create(**kw)
        return time.perf_counter() - start, None, out.usage.completion_tokens
    first, used = None, 0
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage:
            used = chunk.usage.completion_tokens
    return time.perf_counter() - start, (first - start) if first else None, used


def bench_single(url: str, inproc: Any, tokens: int, reps: int) -> dict[str, Any]:
    """In-process, HTTP non-streaming and HTTP streaming, interleaved rep by rep (a shared, noisy machine)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0)
    inproc.once()
    request(client, tokens, False)
    request(client, tokens, True)
    runs: dict[str, list[tuple[float, float | None]]] = {"inproc": [], "nonstream": [], "stream": []}
    for _ in range(reps):
        runs["inproc"].append(inproc.once())
        for key, stream in (("nonstream", False), ("stream", True)):
            elapsed, ttft, used = request(client, tokens, stream)
            assert used == tokens, f"expected {tokens} tokens over HTTP, got {used}"
            runs[key].append((elapsed, ttft))
    out = {f"{k}_tokens_per_s": tokens / statistics.median(r[0] for r in v) for k, v in runs.items()}
    # rep by rep (the three runs of a rep are back to back): robust to load that drifts between reps
    for key in ("nonstream", "stream"):
        pairs = zip(runs["inproc"], runs[key], strict=True)
        out[f"{key}_vs_inproc_paired"] = statistics.median(i[0] / h[0] for i, h in pairs)
    out["inproc_ttft_ms"] = 1000 * statistics.median(r[1] for r in runs["inproc"])
    out["stream_ttft_ms"] = 1000 * statistics.median(r[1] for r in runs["stream"] if r[1] is not None)
    return out


def bench_concurrent(url: str, clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    import openai

    latencies: list[float] = []
    errors: list[str] = []
    produced = [0]
    lock = threading.Lock()

    def run(i: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=120)
        for j in range(per_client):
            try:
                elapsed, _, used = request(client, tokens, stream=(i + j) % 2 == 0)
                with lock:
                    latencies.append(elapsed)
                    produced[0] += used
            except Exception as exc:  # every failure counts as an error
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    wall = run_clients(clients, run)
    p95 = _p95(latencies)
    return {
        "clients": clients,
        "requests": clients * per_client,
        "tokens_per_s": produced[0] / wall,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "latency_p95_ms": 1000 * p95,
        "errors": len(errors),
        "error_samples": errors[:3],
    }
