"""Rollout benchmark, transfer part: artifact download over HTTP(S) and gRPC against raw loopback TCP, in one run.

``python bench/rollout.py [--size-mb 100] [--agents 20] [--repeats 7] [--slots 4] [--no-malloc-tuning]``
``python bench/rollout.py --quick``: only the one-agent comparison (no protobuf server, no fleet), 5 repeats.
``python bench/rollout.py --s3 [--agents 20]``: a rollout through a whole controller on the S3 blob store
(bench/rollout_s3.py): ``controller_artifact_bytes`` must be 0 (agents download from presigned URLs).

1. Raw TCP baseline: a child process reads the blob file and writes it to a socket; this process receives it
   into a file (the same work an artifact transfer does, minus the protocol). Also memory-to-memory TCP.
2. Artifact transfer: a child process runs a gRPC server whose ``DownloadArtifact`` streams the blob from a
   real :class:`BlobStore` through ``stream_artifact`` (the controller's code path); this process downloads it
   with the agent's ``download_file`` (crc32 per chunk, resumable partial file), after the same allocator
   tuning the agent applies at start (``tune_malloc_for_streaming``). TCP and gRPC runs alternate,
   so both see the same machine load. Chunks go out pre-encoded (``wire=True``); the same server with
   protobuf messages is measured alongside for comparison.
   A download ends with an fsync (the file must survive a crash before it is installed); the TCP baseline
   does not. ``durable_write_mb_s`` shows what that costs: the blob copied locally into a new file with the
   downloader's writeback and final fsync, no network. A download cannot be faster than that.
   ``tcp_durable_mb_s`` is the raw TCP receiver doing the same writeback and fsync.
   ``grpc_bare_mb_s`` is grpcio's own ceiling on this machine: a bare server stream of pre-built payloads that
   the client only counts, alternated with memory-to-memory TCP (``grpc_bare_vs_tcp_memory``).
   ``grpc_bare_vs_tcp`` puts it against the target's own baseline (TCP file-to-file): when it is below the target,
   no download over grpcio from Python can reach the target here (``bench/transfer_baselines.py``).
3. Fleet: ``--agents`` downloaders (threads in one child process, each with its own connection) fetch the
   blob at once through the controller's download gate, while this process calls a cheap unary RPC in a
   loop: total time, aggregate throughput, and that RPC's p50/p99 latency idle and during the downloads.

4. HTTP(S) byte path (bench/rollout_http.py): ``transfer_vs_tcp`` is the best HTTPS download through the
   controller's artifact server / the best raw TCP file-to-file run, with the SAME fsync policy on both sides
   (writeback every 8 MiB + fsync at the end; printed); ``transfer_vs_tcp_insecure`` the same over plain HTTP
   (sendfile). ``http_fleet``: ``--agents`` HTTPS downloads at once vs as many raw TCP ones
   (``fleet_aggregate_vs_tcp``), and the controller's unary RPC p99 during them / idle (``rpc_p99_during_vs_idle``).

The last line printed is one JSON object. ``grpc_transfer_vs_tcp`` is the best gRPC run / best file-to-file TCP
run (``transfer_vs_tcp_pairs_median``, ``_memory`` and ``_durable`` are gRPC figures too) and ``fleet`` the gRPC fleet.
The functions are reusable for a full rollout through the real controller.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from agent.install.grpc_fetch import CHANNEL_OPTIONS, grpc_fetch  # noqa: E402
from agent.install.transfer import RetryPolicy, download_file  # noqa: E402
from agent.install.tuning import tune_malloc_for_streaming  # noqa: E402
from controller.registry.blobs import BlobStore  # noqa: E402
from controller.registry.transfer import DEFAULT_CHUNK, DownloadGate  # noqa: E402
from controller.registry.transfer_pb import add_agent_service, stream_artifact  # noqa: E402
from shared.manifest import FileEntry  # noqa: E402
from shared.pb import agent_pb2, agent_pb2_grpc  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import rollout_http  # noqa: E402
from transfer_baselines import (  # noqa: E402
    MB,
    bare_grpc_transfer,
    durable_write,
    make_blob,
    serve_bare_grpc,
    serve_tcp,
    tcp_durable_transfer,
    tcp_file_transfer,
    tcp_memory_transfer,
)


# --- child processes -------------------------------------------------------------------------------------
def _spawn(*args: str) -> tuple[subprocess.Popen, str]:
    """Start ``rollout.py <args>`` as a child; it prints its address on its first line."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"child {args[0]} did not start")
    return proc, line


class BenchServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: BlobStore, gate: DownloadGate | None, chunk: int, wire: bool) -> None:
        self.store, self.gate, self.chunk, self.wire = store, gate, chunk, wire

    def DownloadArtifact(self, request, context):
        return stream_artifact(
            self.store,
            request.sha256,
            request.offset,
            request.max_bytes_per_s,
            gate=self.gate,
            context=context,
            chunk_size=self.chunk,
            wire=self.wire,
        )

    def Heartbeat(self, request, context):
        return agent_pb2.HeartbeatResponse(heartbeat_interval_s=5)


def serve_blobs(root: Path, workers: int, slots: int, chunk: int, wire: bool = True, switch_ms: float = 0) -> None:
    """Child: the controller side, a gRPC server streaming blobs from ``root`` behind a download gate;
    ``wire``: pre-encoded chunks (add_agent_service), else protobuf messages (generated registration);
    ``switch_ms``: the interpreter's GIL switch interval (0: Python's default, 5 ms)."""
    if switch_ms > 0:
        sys.setswitchinterval(switch_ms / 1000)
    gate = DownloadGate(slots=slots, max_waiting=slots, wait_s=1.0, retry_after_s=0.5) if slots else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    servicer = BenchServicer(BlobStore(root), gate, chunk, wire)
    if wire:
        add_agent_service(servicer, server)
    else:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


# --- measurements ----------------------------------------------------------------------------------------
def agent_channel(address: str, own_connection: bool = False) -> grpc.Channel:
    options = list(CHANNEL_OPTIONS)
    if own_connection:  # like a separate agent machine: do not share the TCP connection with other channels
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.insecure_channel(address, options=options)


def grpc_transfer(channel: grpc.Channel, entry: FileEntry, dest_dir: Path) -> float:
    """Download ``entry`` with the agent's downloader; returns MB/s."""
    started = time.perf_counter()
    result = download_file(grpc_fetch(channel), entry, dest_dir)
    elapsed = time.perf_counter() - started
    result.path.unlink()
    return entry.size / elapsed / MB


def probe_rpc(channel: grpc.Channel, stop: threading.Event, interval_s: float = 0.005) -> list[float]:
    """Call Heartbeat in a loop until ``stop``; returns latencies in ms."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    request = agent_pb2.HeartbeatRequest(agent_id="probe")
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        stub.Heartbeat(request, timeout=30)
        latencies.append((time.perf_counter() - started) * 1000)
        stop.wait(interval_s)
    return latencies


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fleet(address: str, sha: str, size: int, agents: int, dest: Path, tune: bool) -> None:
    """Child: ``agents`` concurrent downloads of one blob, each on its own connection; prints JSON stats."""
    if tune:
        tune_malloc_for_streaming()
    entry = FileEntry("blob", sha, size)
    retry = RetryPolicy(max_attempts=60, initial_s=0.1, max_s=1.0)
    results: list[dict] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        channel = agent_channel(address, own_connection=True)
        folder = dest / f"agent{i}"
        started = time.perf_counter()
        try:
            res = download_file(grpc_fetch(channel), entry, folder, retry=retry)
            res.path.unlink()
            row = {"s": time.perf_counter() - started, "retries": res.retries, "error": ""}
        except Exception as exc:
            row = {"s": time.perf_counter() - started, "retries": -1, "error": str(exc)[:200]}
        channel.close()
        with lock:
            results.append(row)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - started
    print(json.dumps({"total_s": total, "downloads": results}), flush=True)


def concurrent_downloads(address: str, entry: FileEntry, agents: int, work: Path, tune: bool = True) -> dict:
    """Run the fleet child while probing a unary RPC from here; returns the figures."""
    stop = threading.Event()
    probe_channel = agent_channel(address, own_connection=True)
    latencies: list[float] = []
    prober = threading.Thread(target=lambda: latencies.extend(probe_rpc(probe_channel, stop)))
    prober.start()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "fleet", address, entry.sha256, str(entry.size),
         str(agents), str(work), "tune" if tune else "default"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    stop.set()
    prober.join()
    probe_channel.close()
    if proc.returncode != 0:
        raise RuntimeError(f"fleet child failed: {proc.stderr[-2000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = stats["downloads"]
    errors = [r["error"] for r in rows if r["error"]]
    return {
        "agents": agents,
        "total_s": round(stats["total_s"], 3),
        "aggregate_mb_s": round(entry.size * (agents - len(errors)) / stats["total_s"] / MB, 1),
        "per_agent_s_p50": round(statistics.median(r["s"] for r in rows), 3),
        "per_agent_s_max": round(max(r["s"] for r in rows), 3),
        "gate_retries": sum(max(0, r["retries"]) for r in rows),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "rpc_calls": len(latencies),
        "rpc_p50_ms": round(percentile(latencies, 50), 2),
        "rpc_p99_ms": round(percentile(latencies, 99), 2),
        "rpc_max_ms": round(max(latencies), 2) if latencies else float("nan"),
    }


def idle_rpc(address: str, seconds: float = 1.0) -> dict:
    stop = threading.Event()
    channel = agent_channel(address, own_connection=True)
    threading.Timer(seconds, stop.set).start()
    latencies = probe_rpc(channel, stop)
    channel.close()
    return {"rpc_p50_ms": round(percentile(latencies, 50), 2), "rpc_p99_ms": round(percentile(latencies, 99), 2)}


def run(args: argparse.Namespace) -> dict:
    tuned = not args.no_malloc_tuning and tune_malloc_for_streaming()  # as the agent does at start
    work = Path(args.work or tempfile.mkdtemp(prefix="slmops-bench-rollout-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(args.size_mb * MB)
    blob = make_blob(work / "blob.bin", size)
    store = BlobStore(work / "store")
    ref = store.put_file(blob, link=True)
    entry = FileEntry("blob", ref.sha256, ref.size)
    chunk = args.chunk_kib * 1024
    server_args = (str(store.root), str(args.workers), str(args.slots), str(chunk))
    switch = str(args.switch_interval_ms)
    tcp_proc, tcp_addr = _spawn("serve-tcp", str(blob))
    grpc_proc, grpc_addr = _spawn("serve-blobs", *server_args, "wire", switch)
    bare_proc, bare_addr = _spawn("serve-bare", str(chunk), str(args.workers))
    procs = [tcp_proc, grpc_proc, bare_proc]
    if not args.quick:
        pb_proc, pb_addr = _spawn("serve-blobs", *server_args, "protobuf", switch)
        procs.append(pb_proc)
    try:
        channel = agent_channel(grpc_addr)
        pb_channel = None if args.quick else agent_channel(pb_addr)
        grpc_transfer(channel, entry, work / "dl")  # warm-up: connections, page cache, BDP window
        if pb_channel is not None:
            grpc_transfer(pb_channel, entry, work / "dl")
        bare = agent_channel(bare_addr)
        bare_grpc_transfer(bare, size)
        tcp_file_transfer(tcp_addr, work / "tcp.out", size)
        tcp_runs, grpc_runs, pb_runs, disk_runs, tcp_durable_runs = [], [], [], [], []
        for _ in range(args.repeats):  # alternate, so all see the same load on a shared machine
            tcp_runs.append(tcp_file_transfer(tcp_addr, work / "tcp.out", size))
            grpc_runs.append(grpc_transfer(channel, entry, work / "dl"))
            if pb_channel is not None:
                pb_runs.append(grpc_transfer(pb_channel, entry, work / "dl"))
            disk_runs.append(durable_write(blob, work / "disk.out"))
            tcp_durable_runs.append(tcp_durable_transfer(tcp_addr, work / "tcp.out", size))
        tcp_mem_runs, bare_runs = [], []
        for _ in range(args.repeats):  # the protocol's own ceiling against raw TCP, memory to memory
            tcp_mem_runs.append(tcp_memory_transfer(tcp_addr, size))
            bare_runs.append(bare_grpc_transfer(bare, size))
        tcp_mem, bare_best = max(tcp_mem_runs), max(bare_runs)
        bare.close()
        channel.close()
        if pb_channel is not None:
            pb_channel.close()
        idle = idle_rpc(grpc_addr)
        helpers = {"spawn": _spawn, "probe_rpc": probe_rpc, "percentile": percentile, "agent_channel": agent_channel}
        hx = rollout_http.measure(helpers, entry, args.repeats, args.agents, work, tcp_addr, args.http_slots)
        fleet_figures = (
            concurrent_downloads(grpc_addr, entry, args.agents, work / "fleet", tuned) if args.agents else {}
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    tcp_best, grpc_best = max(tcp_runs), max(grpc_runs)
    pair_ratios = [g / t for g, t in zip(grpc_runs, tcp_runs, strict=True)]
    return {
        # Best run against best run: the most either achieved on this machine in this run.
        "transfer_vs_tcp": hx["https_vs_tcp"],  # HTTPS byte path vs raw TCP, same fsync policy (rollout_http.py)
        "transfer_vs_tcp_insecure": hx["http_plain_vs_tcp"],
        "transfer_vs_tcp_tls_proxy": hx["https_proxy_vs_tcp"],  # socat ending TLS in front of plain HTTP
        "fsync_policy": rollout_http.FSYNC_POLICY,
        "fleet_aggregate_vs_tcp": round(hx["fleet"]["aggregate_mb_s"] / hx["fleet"]["tcp"]["aggregate_mb_s"], 3)
        if args.agents
        else None,
        "fleet_aggregate_vs_tcp_insecure": round(
            hx["fleet"]["insecure"]["aggregate_mb_s"] / hx["fleet"]["tcp"]["aggregate_mb_s"], 3
        )
        if args.agents
        else None,
        "rpc_p99_during_vs_idle": hx["fleet"]["rpc_p99_during_vs_idle"] if args.agents else None,
        "http": {k: v for k, v in hx.items() if k != "fleet"},
        "http_fleet": hx.get("fleet", {}),
        "grpc_transfer_vs_tcp": round(grpc_best / tcp_best, 3),
        # Median over back-to-back (TCP, gRPC) pairs: another view when the machine's load drifts.
        "transfer_vs_tcp_pairs_median": round(statistics.median(pair_ratios), 3),
        "transfer_vs_tcp_memory": round(grpc_best / tcp_mem, 3),
        "blob_mb": round(size / MB, 1),
        "chunk_kib": args.chunk_kib,
        "grpc_mb_s": round(grpc_best, 1),
        "tcp_file_mb_s": round(tcp_best, 1),
        "tcp_memory_mb_s": round(tcp_mem, 1),
        "grpc_protobuf_mb_s": round(max(pb_runs), 1) if pb_runs else None,
        # grpcio's own ceiling: a bare server stream of pre-built payloads, counted and dropped by the client.
        "grpc_bare_mb_s": round(bare_best, 1),
        "grpc_bare_vs_tcp_memory": round(bare_best / tcp_mem, 3),
        # The same ceiling against the target's baseline: no download over grpcio can exceed this ratio here.
        "grpc_bare_vs_tcp": round(bare_best / tcp_best, 3),
        # How much of that ceiling the real download (file read, checks, durable write) keeps.
        "transfer_vs_grpc_bare": round(grpc_best / bare_best, 3),
        "tcp_durable_mb_s": round(max(tcp_durable_runs), 1),
        # What durability alone costs raw TCP: the same receiver with the downloader's writeback and fsync.
        "tcp_durable_vs_tcp": round(max(tcp_durable_runs) / tcp_best, 3),
        "transfer_vs_tcp_durable": round(grpc_best / max(tcp_durable_runs), 3),
        "durable_write_mb_s": round(max(disk_runs), 1),
        # Best download against the best local durable write: how close the transfer is to the disk's limit.
        "transfer_vs_durable_write": round(grpc_best / max(disk_runs), 3),
        "grpc_runs_mb_s": [round(x, 1) for x in grpc_runs],
        "grpc_protobuf_runs_mb_s": [round(x, 1) for x in pb_runs],
        "tcp_runs_mb_s": [round(x, 1) for x in tcp_runs],
        "durable_write_runs_mb_s": [round(x, 1) for x in disk_runs],
        "tcp_durable_runs_mb_s": [round(x, 1) for x in tcp_durable_runs],
        "tcp_memory_runs_mb_s": [round(x, 1) for x in tcp_mem_runs],
        "grpc_bare_runs_mb_s": [round(x, 1) for x in bare_runs],
        "idle_rpc_p50_ms": idle["rpc_p50_ms"],
        "idle_rpc_p99_ms": idle["rpc_p99_ms"],
        "fleet": fleet_figures,
        "server_workers": args.workers,
        "gate_slots": args.slots,
        "switch_interval_ms": args.switch_interval_ms or 5.0,
        "agent_malloc_tuned": tuned,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "http":
        return rollout_http.main(argv[1:])
    if argv and argv[0] == "serve-tcp":
        return serve_tcp(Path(argv[1]))
    if argv and argv[0] == "serve-blobs":
        return serve_blobs(Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]), argv[5] == "wire", float(argv[6]))
    if argv and argv[0] == "serve-bare":
        return serve_bare_grpc(int(argv[1]), int(argv[2]))
    if argv and argv[0] == "fleet":
        return fleet(argv[1], argv[2], int(argv[3]), int(argv[4]), Path(argv[5]), argv[6] == "tune")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--agents", type=int, default=20, help="concurrent downloaders in the fleet test (0: skip)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating TCP / gRPC / gRPC-protobuf runs")
    ap.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK // 1024)
    ap.add_argument("--workers", type=int, default=16, help="controller gRPC server threads")
    ap.add_argument("--slots", type=int, default=4, help="concurrent downloads the controller's gate admits")
    ap.add_argument("--switch-interval-ms", type=float, default=0, help="controller's GIL switch interval")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="agent side without tune_malloc_for_streaming()")
    ap.add_argument("--work", help="scratch folder (default: a new temp folder)")
    ap.add_argument("--quick", action="store_true", help="one agent only: no protobuf server, no fleet, 5 repeats")
    ap.add_argument("--s3", action="store_true", help="S3 mode: a rollout to --agents agents (bench/rollout_s3.py)")
    ap.add_argument("--model-dir", help="S3 mode: the onnxruntime-genai model folder (default: the tests' cache)")
    ap.add_argument("--http-slots", type=int, default=0, help="artifact gate (0: default, 1 per 2 cores; -1: none)")
    args = ap.parse_args(argv)
    if args.s3:
        import rollout_s3

        print(json.dumps(rollout_s3.run(args.agents, Path(args.model_dir) if args.model_dir else None)))
        return None
    if args.quick:
        args.agents, args.repeats = 0, min(args.repeats, 5)
    figures = run(args)
    rollout_http.print_summary(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
