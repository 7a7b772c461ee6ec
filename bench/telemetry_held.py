"""Agents held by one controller replica vs two: part of ``bench/telemetry.py`` (``agents_held_1/2``).

"Held" = the most simulated agents, each sending one batch every 5 s, for which the ReportTelemetry p99 stays under
100 ms with no RPC error and nothing lost or duplicated. Searched upward by doubling from ``start`` to ``cap``
(printed; a size that fails twice ends the search), each size for ``duration_s`` seconds, against 1 or 2 bench
server processes (the stand-in of ``bench/telemetry.py``) on one fresh PostgreSQL schema. Two replicas are one
gRPC target ``ipv4:A,B`` with ``round_robin`` (how agents spread over replicas); SQLite holds one process only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import telemetry as tb  # bench/telemetry.py (this directory is on sys.path when it runs)

log = logging.getLogger("bench.telemetry.held")
DEFAULT_PG = os.environ.get("SLMOPS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
P99_LIMIT_MS = 100.0
INTERVAL_S = 5.0


def _create_schema(pg_url: str) -> str:
    """A fresh schema (raises where PostgreSQL is not reachable)."""
    from sqlalchemy import create_engine, text

    name = "bench_" + uuid.uuid4().hex[:10]
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {name}"))
    finally:
        engine.dispose()
    return name


def _drop(pg_url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def _measure(pg_url: str, replicas: int, agents: int, duration_s: float, workers: int) -> dict[str, Any]:
    schema = _create_schema(pg_url)
    db_url = f"{pg_url}?options=-csearch_path%3D{schema}"
    servers = []
    try:
        for _ in range(replicas):
            servers.append(tb.start_server_process(db_url, workers))
        addresses = [address for _, address in servers]
        target = addresses[0] if replicas == 1 else "ipv4:" + ",".join(addresses)
        sim = tb._load_agents(None, agents)
        result = asyncio.run(tb.run_load(target, sim, duration_s, INTERVAL_S, 0.0, drain_s=30.0))
        lost, duplicated, _ = tb.tally(sim, tb.count_stored(db_url))
    finally:
        for proc, _ in servers:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
        _drop(pg_url, schema)
    p99 = tb._pct(result.latencies_ms, 99) if result.latencies_ms else float("inf")
    ok = p99 < P99_LIMIT_MS and not result.rpc_errors and not lost and not duplicated
    errors = sum(result.rpc_errors.values())
    return {"agents": agents, "p99_ms": p99, "errors": errors, "lost": lost, "duplicated": duplicated, "ok": ok}


def search(pg_url: str, replicas: int, start: int, cap: int, duration_s: float, workers: int) -> dict[str, Any]:
    """Double the agents from ``start`` while the figures hold, up to ``cap``; the largest size that held."""
    held, steps, n = 0, [], start
    while n <= cap:
        t0 = time.time()
        step = _measure(pg_url, replicas, n, duration_s, workers)
        if not step["ok"]:  # one retry: on a small shared machine a single stall sets the p99
            step = _measure(pg_url, replicas, n, duration_s, workers) | {"retried": True}
        step["seconds"] = round(time.time() - t0, 1)
        steps.append(step)
        print(
            f"  {replicas} replica(s), {n} agents: p99 {step['p99_ms']} ms, errors {step['errors']}, "
            f"lost {step['lost']}, duplicated {step['duplicated']} -> {'held' if step['ok'] else 'NOT held'}",
            flush=True,
        )
        if not step["ok"]:
            break
        held, n = n, n * 2
    return {"held": held, "capped": bool(steps) and steps[-1]["ok"] and n > cap, "steps": steps}


def held_figures(pg_url: str, start: int, cap: int, duration_s: float, workers: int) -> dict[str, Any]:
    """``agents_held_1``, ``agents_held_2`` and the search details (None where PostgreSQL is not reachable)."""
    try:
        _drop(pg_url, _create_schema(pg_url))
    except Exception as exc:
        print(f"agents held: skipped, PostgreSQL not reachable at {pg_url}: {str(exc).splitlines()[0]}")
        return {"agents_held_1": None, "agents_held_2": None}
    # The channel of two replicas spreads RPCs over both (pick_first would send everything to the first).
    tb.CHANNEL_OPTIONS[:] = [("grpc.lb_policy_name", "round_robin")]
    print(
        f"agents held (1 batch / {INTERVAL_S:.0f} s each, p99 < {P99_LIMIT_MS:.0f} ms, nothing lost): doubling "
        f"from {start} up to a cap of {cap} agents, {duration_s:.0f} s per size",
        flush=True,
    )
    one = search(pg_url, 1, start, cap, duration_s, workers)
    two = search(pg_url, 2, start, cap, duration_s, workers)
    print(f"agents held: 1 replica {one['held']}, 2 replicas {two['held']} (cap {cap})")
    return {
        "agents_held_1": one["held"],
        "agents_held_2": two["held"],
        "agents_held_search": {"cap": cap, "start": start, "duration_s": duration_s, "one": one, "two": two},
    }
