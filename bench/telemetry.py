"""Telemetry ingest under load: many simulated agents report over real gRPC; every sample must land once.

``python bench/telemetry.py [--agents 1000] [--interval 5] [--duration 60]`` starts a controller-side
gRPC server in a child process (its own GIL, like a real controller) whose ``ReportTelemetry`` runs
``controller.telemetry.ingest.ingest_batch`` on a real Store (SQLite file by default, ``--db`` for another
URL), then drives it from one asyncio load generator: each agent sends one batch (one window) every
``--interval`` seconds with its own sequence numbers, keeps a batch whose RPC failed and sends it first on
its next tick (as the agent's reporter does), and re-sends a share of acknowledged batches on purpose to
prove they are deduplicated. Afterwards the database is counted per (agent, seq) against what was sent:
``lost`` = windows acknowledged or sent but not stored, ``duplicated`` = windows stored more than once.

``--target HOST:PORT`` points the load at a running controller instead (``--agents-file`` gives each agent's
id and gRPC metadata as JSON ``[{"agent_id": ..., "metadata": {...}}]``; ``--db`` its database, for the
counts). If ``bench/drift_detectors.py`` is present its figures are included. The last line printed is one
JSON object: ``agents``, ``rpc_p99_ms``, ``lost``, ``duplicated``, ``detectors`` ({name: {delay_windows,
false_alarms}}), plus details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from shared.errors import SlmopsError  # noqa: E402
from shared.pb import agent_pb2, agent_pb2_grpc  # noqa: E402
from shared.telemetry import TelemetryWindowData  # noqa: E402

log = logging.getLogger("bench.telemetry")
CHANNEL_OPTIONS: list[tuple[str, object]] = []  # of the load generator's channels (round_robin for replicas)


# --- controller side (stand-in until the real server takes this bench) ----------------------------------
class _TelemetryServicer(agent_pb2_grpc.AgentServiceServicer):
    """Telemetry-only, unauthenticated: the agent id is taken from the x-slmops-agent-id metadata."""

    def __init__(self, store: object) -> None:
        self.store = store

    def ReportTelemetry(self, request, context):  # type: ignore[no-untyped-def]
        from controller.telemetry.ingest import report_telemetry

        agent_id = str(dict(context.invocation_metadata()).get("x-slmops-agent-id", ""))
        try:
            return report_telemetry(self.store, agent_id, request)  # type: ignore[arg-type]
        except SlmopsError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), exc.message)


def serve(db_url: str, port: int, workers: int) -> None:
    """Child process: serve ReportTelemetry until stdin closes."""
    from controller.store.db import Store
    from controller.telemetry import ingest  # noqa: F401 - imported now, not in the first RPC (as in a controller)

    store = Store(db_url)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.max_concurrent_streams", 1000)]
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_TelemetryServicer(store), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"LISTENING {bound}", flush=True)
    sys.stdin.read()  # parent closes our stdin to stop us
    server.stop(grace=2).wait()
    store.close()


def start_server_process(db_url: str, workers: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--db", db_url, "--workers", str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"bench server did not start (got {line!r}); run with --serve to see why")
    return proc, f"127.0.0.1:{line.split()[1]}"


# --- load generator -------------------------------------------------------------------------------------
@dataclass
class SimAgent:
    agent_id: str
    metadata: tuple[tuple[str, str], ...]
    next_seq: int = 1
    pending: list[agent_pb2.TelemetryBatch] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    sent_seqs: set[int] = field(default_factory=set)


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    rpc_errors: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    resends_not_flagged: int = 0
    batches_acked: int = 0


def _window(rng: random.Random, now: float, interval_s: float) -> agent_pb2.TelemetryWindow:
    n = rng.randint(1, 50)
    ttft = sorted(rng.uniform(5, 80) for _ in range(3))
    lat = sorted(rng.uniform(80, 900) for _ in range(3))
    hist = [0] * 10
    for _ in range(n):
        hist[rng.randrange(10)] += 1
    return TelemetryWindowData(
        start_unix=now - interval_s,
        end_unix=now,
        model_name="bench",
        model_version="1",
        profile="cpu-int4",
        request_count=n,
        error_count=rng.randint(0, n // 10),
        ttft_p50_ms=ttft[0],
        ttft_p95_ms=ttft[1],
        ttft_p99_ms=ttft[2],
        latency_p50_ms=lat[0],
        latency_p95_ms=lat[1],
        latency_p99_ms=lat[2],
        itl_p50_ms=4.0,
        itl_p95_ms=7.0,
        tokens_per_s=rng.uniform(100, 400),
        prompt_tokens=20 * n,
        completion_tokens=25 * n,
        prompt_len_hist=hist,
        prompt_len_edges=[8, 16, 32, 64, 128, 256, 512, 1024, 2048],
        prompt_nll=rng.uniform(1, 3),
        format_validity=rng.uniform(0.9, 1.0),
    ).to_pb()


async def _agent_loop(
    agent: SimAgent,
    stub: agent_pb2_grpc.AgentServiceStub,
    result: LoadResult,
    interval_s: float,
    stop_at: float,
    resend_fraction: float,
    rng: random.Random,
) -> None:
    await asyncio.sleep(rng.uniform(0, interval_s))  # agents are not in phase
    while True:
        now = time.time()
        if now < stop_at:
            batch = agent_pb2.TelemetryBatch(
                agent_id=agent.agent_id, seq=agent.next_seq, windows=[_window(rng, now, interval_s)]
            )
            agent.next_seq += 1
            agent.pending.append(batch)
        elif not agent.pending:
            return
        while agent.pending:  # oldest first; stop at the first failure and keep the rest
            batch = agent.pending[0]
            if not await _send(agent, stub, batch, result):
                break
            agent.pending.pop(0)
            agent.acked.add(batch.seq)
            result.batches_acked += 1
            if rng.random() < resend_fraction:  # a resend after a "lost ack": must be flagged duplicate
                result.resends += 1
                ack = await _send(agent, stub, batch, result)
                if ack is not None and not ack.duplicate:
                    result.resends_not_flagged += 1
        await asyncio.sleep(interval_s if time.time() < stop_at else 0.5)


async def _send(
    agent: SimAgent, stub: agent_pb2_grpc.AgentServiceStub, batch: agent_pb2.TelemetryBatch, result: LoadResult
) -> agent_pb2.TelemetryAck | None:
    agent.sent_seqs.add(batch.seq)
    t0 = time.perf_counter()
    try:
        ack = await stub.ReportTelemetry(batch, metadata=agent.metadata, timeout=10.0)
    except grpc.aio.AioRpcError as exc:
        result.rpc_errors[exc.code().name] += 1
        return None
    result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
    return ack


async def run_load(
    target: str,
    agents: list[SimAgent],
    duration_s: float,
    interval_s: float,
    resend_fraction: float = 0.02,
    channels: int = 64,
    seed: int = 0,
    drain_s: float = 60.0,
) -> LoadResult:
    """Drive ``agents`` against ``target`` for ``duration_s``, then let each drain what it still holds."""
    result = LoadResult()
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(min(channels, len(agents)))]
    # Connected first (agents hold long-lived connections): the latencies are of RPCs, not of TCP/HTTP2 setup.
    await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in chans)), timeout=30)
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in chans]
    stop_at = time.time() + duration_s
    tasks = [
        _agent_loop(a, stubs[i % len(stubs)], result, interval_s, stop_at, resend_fraction, random.Random(seed + i))
        for i, a in enumerate(agents)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration_s + interval_s + drain_s)
    except TimeoutError:
        log.warning("some agents still had unsent batches after the drain period")
    for c in chans:
        await c.close()
    return result


def count_stored(db_url: str) -> dict[tuple[str, int], int]:
    """Windows stored per (agent_id, seq)."""
    from sqlalchemy import func, select

    from controller.store.db import Store
    from controller.store.tables import TelemetryWindowRow as W

    store = Store(db_url)
    try:
        with store.session() as s:
            rows = s.execute(select(W.agent_id, W.seq, func.count()).group_by(W.agent_id, W.seq)).all()
    finally:
        store.close()
    return {(a, int(q)): int(n) for a, q, n in rows}


def tally(agents: list[SimAgent], stored: dict[tuple[str, int], int]) -> tuple[int, int, int]:
    """(lost, duplicated, sent-but-unacked-and-not-stored) windows; every batch holds one window."""
    lost = duplicated = unacked_missing = 0
    expected: set[tuple[str, int]] = set()
    for a in agents:
        for seq in a.sent_seqs | a.acked:
            expected.add((a.agent_id, seq))
            n = stored.get((a.agent_id, seq), 0)
            duplicated += max(0, n - 1)
            if n == 0:
                lost += 1
                unacked_missing += int(seq not in a.acked)
    duplicated += sum(n for key, n in stored.items() if key not in expected)
    return lost, duplicated, unacked_missing


def _pct(values: list[float], q: float) -> float:
    from agent.telemetry.windows import percentile

    return round(percentile(sorted(values), q), 2)


def _detectors() -> dict:
    if not (REPO / "bench" / "drift_detectors.py").exists():
        return {}
    sys.path.insert(0, str(REPO / "bench"))
    from drift_detectors import measure_detectors  # type: ignore[import-not-found]

    return measure_detectors()


def _load_agents(path: str | None, n: int) -> list[SimAgent]:
    if path:
        spec = json.loads(Path(path).read_text())
        return [SimAgent(a["agent_id"], tuple(a.get("metadata", {}).items())) for a in spec]
    run = os.urandom(3).hex()
    return [SimAgent(f"bench-{run}-{i:05d}", (("x-slmops-agent-id", f"bench-{run}-{i:05d}"),)) for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between an agent's batches")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--resend-fraction", type=float, default=0.02)
    p.add_argument("--channels", type=int, default=64, help="gRPC connections shared by the simulated agents")
    p.add_argument("--target", help="a running controller HOST:PORT (default: start a bench server)")
    p.add_argument("--agents-file", help="JSON list of {agent_id, metadata} for --target")
    p.add_argument("--db", help="database URL (the bench server's store, or the target's, for the counts)")
    p.add_argument("--workers", type=int, default=16, help="bench server thread pool")
    p.add_argument("--no-detectors", action="store_true")
    p.add_argument("--no-held", action="store_true", help="skip agents_held_1/2 (1 vs 2 replicas, PostgreSQL)")
    p.add_argument("--held-cap", type=int, default=1600, help="most agents the held search tries (default 1600)")
    p.add_argument("--held-duration", type=float, default=15.0, help="seconds of load per size in the search")
    p.add_argument("--held-start", type=int, default=50, help="agents the held search starts from (doubling)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.serve:
        serve(args.db, 0, args.workers)
        return

    tmp = tempfile.TemporaryDirectory(prefix="slmops-bench-")
    db_url = args.db or f"sqlite:///{Path(tmp.name) / 'controller.db'}"
    server = None
    server_cpu_s = None
    if args.target:
        target = args.target
    else:
        server, target = start_server_process(db_url, args.workers)
    agents = _load_agents(args.agents_file, args.agents)
    log.info(
        "%d agents -> %s, one batch each every %.1f s for %.0f s", len(agents), target, args.interval, args.duration
    )
    t0 = time.time()
    try:
        result = asyncio.run(
            run_load(target, agents, args.duration, args.interval, args.resend_fraction, args.channels)
        )
        elapsed = time.time() - t0
        lost = duplicated = unacked_missing = None
        if args.db or not args.target:
            lost, duplicated, unacked_missing = tally(agents, count_stored(db_url))
    finally:
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            _, _, usage = os.wait4(server.pid, 0)  # the server's CPU time: a figure other load cannot inflate
            server.returncode = 0
            server_cpu_s = usage.ru_utime + usage.ru_stime
    lat = result.latencies_ms
    figures = {
        "agents": len(agents),
        "rpc_p99_ms": _pct(lat, 99),
        "lost": lost,
        "duplicated": duplicated,
        "rpc_p50_ms": _pct(lat, 50),
        "rpc_p95_ms": _pct(lat, 95),
        "rpcs": len(lat),
        "rpc_per_s": round(len(lat) / elapsed, 1),
        "rpc_errors": dict(result.rpc_errors),
        "batches_acked": result.batches_acked,
        "deliberate_resends": result.resends,
        "resends_not_flagged_duplicate": result.resends_not_flagged,
        "unacked_not_stored": unacked_missing,
        "server_cpu_ms_per_rpc": round(server_cpu_s * 1000 / max(1, len(lat)), 3) if server_cpu_s else None,
        "client_cpu_ms_per_rpc": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime)
            * 1000
            / max(1, len(lat)),
            3,
        ),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "server": "bench stand-in (controller.telemetry.ingest on a Store)" if server else target,
        "db": "sqlite" if db_url.startswith("sqlite") else db_url.split(":", 1)[0],
    }
    print(
        f"agents {figures['agents']}  rpcs {figures['rpcs']} ({figures['rpc_per_s']}/s)  "
        f"p50 {figures['rpc_p50_ms']} ms  p95 {figures['rpc_p95_ms']} ms  p99 {figures['rpc_p99_ms']} ms  "
        f"errors {figures['rpc_errors'] or 0}  lost {lost}  duplicated {duplicated}  "
        f"resends {result.resends} (not flagged {result.resends_not_flagged})  "
        f"server CPU {figures['server_cpu_ms_per_rpc']} ms/rpc  load avg {figures['load_avg_1m']}"
    )
    figures["detectors"] = {} if args.no_detectors else _detectors()
    if not args.no_held:
        from telemetry_held import DEFAULT_PG, held_figures

        pg = args.db if args.db and args.db.startswith("postgres") else DEFAULT_PG
        figures.update(held_figures(pg, args.held_start, args.held_cap, args.held_duration, args.workers))
    tmp.cleanup()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
