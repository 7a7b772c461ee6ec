"""Concurrency sweep for bench/serve.py: the batched (og.Engine) and sequential (og.Generator per request)
paths of the agent's HTTP API at 1, 4, 8 and 16 concurrent streaming clients, and the in-process cost of the
per-token logprobs serving records for telemetry.

Each path runs in its own server process: ``--batching off`` with the shipped default of 2 workers (more
threads only contend for the GIL and the cores), ``--batching engine`` with one worker per possible client (a
worker only waits on the engine's event queue). Every client sends streaming requests of ``tokens`` new tokens
(end-of-sequence ignored, greedy), so both paths generate the same amount.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

LEVELS = (1, 4, 8, 16)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.95 * len(values)))] if values else float("nan")


def sweep_level(url: str, clients: int, per_client: int, tokens: int, request: Any) -> dict[str, Any]:
    import openai

    ttfts: list[float] = []
    produced, errors = [0], [0]
    lock = threading.Lock()

    def run(_i: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=300)
        for _ in range(per_client):
            try:
                _, ttft, used = request(client, tokens, True)
                with lock:
                    produced[0] += used
                    if ttft is not None:
                        ttfts.append(ttft)
            except Exception:
                with lock:
                    errors[0] += 1

    wall = run_clients(clients, run)
    return {"tokens_per_s": produced[0] / wall, "ttft_p95_ms": 1000 * _p95(ttfts), "errors": errors[0]}


def run_clients(clients: int, client: Any) -> float:
    """``client(i)`` for each of ``clients`` on threads of its own, all at once; returns the wall time (s)."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def bench_paths(
    start_server: Any, request: Any, og_dir: Path, tokens: int, per_client: int, levels: tuple[int, ...] = LEVELS
) -> dict[str, dict[int, dict[str, Any]]]:
    """{"sequential"|"batched": {clients: figures}}."""
    top = max(levels)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path, workers, extra in (
        ("sequential", 2, ("--batching", "off")),
        ("batched", top, ("--batching", "engine", "--max-batch", str(min(top, 16)))),
    ):
        proc, url = start_server(og_dir, workers, *extra, "--max-queue", str(4 * top))
        try:
            request(__import__("openai").OpenAI(base_url=url, api_key="b", max_retries=0), tokens, True)  # warm-up
            out[path] = {c: sweep_level(url, c, per_client, tokens, request) for c in levels}
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def logprobs_cost(og_dir: Path, tokens: int, reps: int) -> dict[str, float]:
    """In-process tokens/s with and without the per-token logprob + entropy serving records for telemetry."""
    import threading as th

    from agent.runtime import get_runtime
    from agent.runtime.base import GenParams, Prompt

    model = get_runtime("ort-genai", batching="off").load(og_dir)
    prompt = Prompt.chat([{"role": "user", "content": "dim the lights in meeting room 21"}])
    speeds: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(reps + 1):
            for want in (False, True):
                params = GenParams(max_new_tokens=tokens, ignore_eos=True, want_logprobs=want)
                start = time.perf_counter()
                n = sum(ev.token_count for ev in model.generate(prompt, params, th.Event()))
                speeds[want].append(n / (time.perf_counter() - start))
    finally:
        model.close()
    off, on = statistics.median(speeds[False][1:]), statistics.median(speeds[True][1:])
    return {"tokens_per_s_without": off, "tokens_per_s_with": on, "logprobs_cost_pct": 100 * (1 - on / off)}


def summary(paths: dict[str, dict[int, dict[str, Any]]], at: int = 8) -> dict[str, Any]:
    seq, bat = paths["sequential"], paths["batched"]
    at = at if at in seq else max(seq)
    return {
        "batched_vs_sequential": round(bat[at]["tokens_per_s"] / seq[at]["tokens_per_s"], 3),
        "ttft_p95_batched_vs_sequential": round(bat[at]["ttft_p95_ms"] / seq[at]["ttft_p95_ms"], 3),
        "sweep_at_clients": at,
        "sweep": {
            p: {str(c): {k: round(v, 1) if isinstance(v, float) else v for k, v in f.items()} for c, f in d.items()}
            for p, d in paths.items()
        },
        "sweep_errors": sum(f["errors"] for d in paths.values() for f in d.values()),
    }


def stream_breakdown(og_dir: Path, tokens: int, reps: int) -> dict[str, float]:
    """Where a single stream's time goes before HTTP: tokens/s of the agent's runtime ``generate`` (detokenizing,
    events) without and with what serving asks for every request (prompt NLL, per-token logprobs), and as a
    served request without stop sequences runs it (telemetry logprobs, up to 32 tokens per event:
    ``runtime_serving_events``). Compare with ``inprocess_tokens_per_s`` (raw og loop) and the HTTP figures."""
    import threading as th

    from agent.runtime import get_runtime
    from agent.runtime.base import GenParams, Prompt

    model = get_runtime("ort-genai", batching="off").load(og_dir)
    prompt = Prompt.chat([{"role": "user", "content": "dim the lights in meeting room 21 to 90%"}])
    variants = {
        "runtime_bare": GenParams(max_new_tokens=tokens, ignore_eos=True),
        "runtime_serving_params": GenParams(
            max_new_tokens=tokens, ignore_eos=True, want_logprobs=True, want_prompt_nll=True
        ),
        "runtime_serving_events": GenParams(
            max_new_tokens=tokens, ignore_eos=True, want_logprobs=True, event_tokens=32
        ),
    }
    speeds: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(reps + 1):
            for key, params in variants.items():
                start = time.perf_counter()
                n = sum(ev.token_count for ev in model.generate(prompt, params, th.Event()))
                speeds[key].append(n / (time.perf_counter() - start))
    finally:
        model.close()
    return {f"{k}_tokens_per_s": round(statistics.median(v[1:]), 1) for k, v in speeds.items()}
