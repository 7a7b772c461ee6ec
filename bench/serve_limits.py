"""Serving limits under big bodies, for ``bench/serve.py``: a fresh agent serving process (with the agent's
malloc tuning) gets ``count`` requests whose bodies are far over its ``max_body_bytes``; its RSS before and
after (``rss_growth_big_bodies_pct``) and ``/healthz`` latency polled meanwhile (``healthz_p99_during_big_ms``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def bench_big_bodies(
    start_server: Callable[..., tuple[subprocess.Popen[str], str]],
    request: Callable[..., object],
    og_dir: Path,
    workers: int,
    count: int,
    size_mb: float,
    tokens: int,
) -> dict[str, Any]:
    """``count`` chat requests with a ``size_mb`` MB prompt, one after another, to a fresh server process run as
    the agent runs it (malloc tuning on): its RSS before and after, and /healthz latency polled meanwhile."""
    import httpx
    import openai
    import psutil

    proc, url = start_server(og_dir, workers, "--tune-malloc")
    try:
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=120)
        for _ in range(3):  # steady state first: the first requests allocate what every request reuses
            request(client, tokens, stream=False)
        server = psutil.Process(proc.pid)
        rss_before = server.memory_info().rss
        prompt = "dim the lights " * int(size_mb * 1e6 / 15)
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8})
        raw = body.encode()
        latencies: list[float] = []
        done = threading.Event()
        statuses: Counter[int] = Counter()

        def poll() -> None:
            with httpx.Client(timeout=60) as http:
                while not done.is_set():
                    start = time.perf_counter()
                    http.get(url.removesuffix("/v1") + "/healthz").raise_for_status()
                    latencies.append(time.perf_counter() - start)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with httpx.Client(timeout=120) as http:
                for _ in range(count):
                    resp = http.post(
                        f"{url}/chat/completions", content=raw, headers={"Content-Type": "application/json"}
                    )
                    statuses[resp.status_code] += 1
        finally:
            done.set()
            poller.join()
        rss_after = server.memory_info().rss
    finally:
        proc.terminate()
        proc.wait(10)
    lat = sorted(latencies)
    return {
        "requests": count,
        "body_bytes": len(raw),
        "statuses": dict(statuses),
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_pct": 100.0 * (rss_after - rss_before) / rss_before,
        "healthz_samples": len(lat),
        "healthz_p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "healthz_p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
    }
