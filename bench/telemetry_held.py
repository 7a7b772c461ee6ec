"""Agents held by one controller replica vs two: part of ``bench/telemetry.py`` (``agents_held_1/2``).

"Held" = the most simulated agents, each sending one batch every 5 s, for which the ReportTelemetry p99 stays under
100 ms with no RPC error and nothing lost or duplicated. Searched upward by doubling from ``start`` to ``cap``
(printed; a size that fails twice ends the search), each size for ``duration_s`` seconds, against 1 or 2 bench
server processes (the stand-in of ``bench/telemetry.py``) on one fresh PostgreSQL schema. Two replicas are one
gRPC target ``ipv4:A,B`` with ``round_robin`` (how agents spread over replicas); SQLite holds one process only.
After the first size that fails, two bisection steps between it and the last one held sharpen the figure.

Each step also reports where the CPU went (``cpu``: seconds per second of load, i.e. cores, for the load
generator (this process), the bench server(s), and PostgreSQL's processes) and the machine's cores: when their
sum reaches the cores, a second replica on the same machine cannot hold more agents, it only shares them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
import uuid
from pathlib import Path
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


def _ticks(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _postgres_cpu() -> float:
    """CPU seconds of every process named ``postgres`` on this machine (the server and its backends)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" (", 1)[1].startswith("postgres)"):
                total += _ticks(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return total


class _CpuMeter:
    """Cores used during a step by the load generator (this process), the bench servers and PostgreSQL."""

    def __init__(self, server_pids: list[int]) -> None:
        self.pids = server_pids
        self.t0, self.start = time.monotonic(), self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime, sum(_ticks(p) for p in self.pids), _postgres_cpu(), _machine_busy()

    def cores(self) -> dict[str, float]:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        end = self._sample()
        load, servers, pg, busy = (round((b - a) / elapsed, 2) for a, b in zip(self.start, end, strict=True))
        return {
            "load_generator": load, "servers": servers, "postgres": pg, "total": round(load + servers + pg, 2),
            "machine_busy": busy,  # every process on the machine (other work included), of os.cpu_count()
        }  # fmt: skip


def _machine_busy() -> float:
    """CPU seconds all cores of this machine have been busy (``/proc/stat``: everything but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


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
        meter = _CpuMeter([proc.pid for proc, _ in servers])
        result = asyncio.run(tb.run_load(target, sim, duration_s, INTERVAL_S, 0.0, drain_s=30.0))
        cpu = meter.cores()
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
    return {
        "agents": agents, "p99_ms": p99, "errors": errors, "lost": lost, "duplicated": duplicated, "ok": ok,
        "cpu_cores": cpu,
    }  # fmt: skip


def search(pg_url: str, replicas: int, start: int, cap: int, duration_s: float, workers: int) -> dict[str, Any]:
    """Double the agents from ``start`` while the figures hold, up to ``cap``; the largest size that held."""
    held, steps, n = 0, [], start
    while n <= cap:
        step = _step(pg_url, replicas, n, duration_s, workers)
        steps.append(step)
        if not step["ok"]:
            break
        held, n = n, n * 2
    capped = bool(steps) and steps[-1]["ok"] and n > cap
    failed = n
    for _ in range(2 if held and not capped else 0):  # bisect between the last size held and the first failed
        mid = (held + failed) // 2
        if mid - held < max(10, held // 10):
            break
        step = _step(pg_url, replicas, mid, duration_s, workers)
        steps.append(step)
        held, failed = (mid, failed) if step["ok"] else (held, mid)
    return {"held": held, "first_failed": None if capped else failed, "capped": capped, "steps": steps}


def _step(pg_url: str, replicas: int, n: int, duration_s: float, workers: int) -> dict[str, Any]:
    t0 = time.time()
    step = _measure(pg_url, replicas, n, duration_s, workers)
    if not step["ok"]:  # one retry: on a small shared machine a single stall sets the p99
        step = _measure(pg_url, replicas, n, duration_s, workers) | {"retried": True}
    step["seconds"] = round(time.time() - t0, 1)
    print(
        f"  {replicas} replica(s), {n} agents: p99 {step['p99_ms']:.1f} ms, errors {step['errors']}, "
        f"lost {step['lost']}, duplicated {step['duplicated']}, cores used {step['cpu_cores']} of "
        f"{os.cpu_count()} -> {'held' if step['ok'] else 'NOT held'}",
        flush=True,
    )
    return step


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
    print(f"agents held: 1 replica {one['held']}, 2 replicas {two['held']} (cap {cap}, {os.cpu_count()} cores)")
    return {
        "agents_held_1": one["held"],
        "agents_held_2": two["held"],
        "agents_held_search": {"cap": cap, "start": start, "duration_s": duration_s, "one": one, "two": two},
    }
