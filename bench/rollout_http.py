"""Rollout benchmark, HTTP(S) byte path: the controller's artifact server against raw loopback TCP (see rollout.py).

Fsync policy, the same on both sides of every ratio: the receiver appends to a new file, starts the kernel's
writeback every 8 MiB (``sync_file_range``, agent/install/stream.py ``Writeback``) and fsyncs the file at the
end; the download also renames it into place, as an install does. ``tcp_durable_transfer`` (transfer_baselines)
is the raw TCP receiver with exactly that policy.

- ``serve_controller``: child, what the controller runs: ``ArtifactHttpServer`` (HTTPS with a CA made by
  ``controller.core.tls``, or plain HTTP with ``sendfile`` like ``--insecure``) over a real BlobStore, and a gRPC
  server in the same process answering the unary Heartbeat the probe calls.
- ``http_transfer``: the agent's ``download_file`` through ``HttpFetch`` (Range GET, 4 MiB reads, durable writer).
- ``fleet_child``: ``agents`` concurrent downloads (threads, one connection each) over HTTP(S), or over raw TCP
  from a threaded TCP file server (``serve_tcp_threaded``) with the same fsync policy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grpc  # noqa: E402
from transfer_baselines import BUF, MB, tcp_durable_transfer  # noqa: E402

from agent.install.http_fetch import HttpFetch  # noqa: E402
from agent.install.transfer import RetryPolicy, download_file  # noqa: E402
from agent.install.tuning import tune_malloc_for_streaming  # noqa: E402
from controller.core.tls import load_or_create  # noqa: E402
from controller.demo.fleet import free_port  # noqa: E402
from controller.registry.blobs import BlobStore  # noqa: E402
from controller.registry.http_artifacts import ArtifactHttpServer, artifact_gate, server_tls_context  # noqa: E402
from controller.registry.urltokens import UrlTokens  # noqa: E402
from shared.manifest import FileEntry  # noqa: E402
from shared.pb import agent_pb2, agent_pb2_grpc  # noqa: E402

FSYNC_POLICY = "append + sync_file_range writeback every 8 MiB + fsync at the end (both HTTP and raw TCP)"
AGENT = "bench-agent"


class _Heartbeats(agent_pb2_grpc.AgentServiceServicer):
    def Heartbeat(self, request, context):
        return agent_pb2.HeartbeatResponse(heartbeat_interval_s=5)


def serve_controller(root: Path, key: str, tls_dir: str, workers: int, slots: int = 0) -> None:
    """Child: artifact server + gRPC Heartbeat in one process; prints ``<grpc address> <artifact base URL>``.
    ``slots``: the artifact server's download gate (0: the default, one per 2 cores; -1: no gate)."""
    context = None
    if tls_dir:
        tls = load_or_create(Path(tls_dir))
        context = server_tls_context(tls.server_cert_pem, tls.server_key_pem)
    gate = None if slots < 0 else artifact_gate(slots)
    http = ArtifactHttpServer(("127.0.0.1", 0), BlobStore(root), UrlTokens(key.encode()), context, gate).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Heartbeats(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    scheme = "https" if context else "http"
    print(f"127.0.0.1:{port} {scheme}://127.0.0.1:{http.port}", flush=True)
    server.wait_for_termination()


def make_fetch(base: str, key: str, ca_pem: bytes | None) -> HttpFetch:
    """The agent's HttpFetch with URLs minted here, as GetArtifactUrls would hand them out."""
    tokens = UrlTokens(key.encode())

    def urls(shas):  # type: ignore[no-untyped-def]
        out = []
        for sha in shas:
            token, expires = tokens.mint(AGENT, sha)
            out.append((sha, f"{base}/v1/artifacts/{sha}?t={token}", expires))
        return out

    return HttpFetch(urls, lambda: AGENT, ca_pem)


def http_transfer(fetch: HttpFetch, entry: FileEntry, dest_dir: Path) -> float:
    """Download ``entry`` with the agent's downloader over HTTP(S); returns MB/s."""
    started = time.perf_counter()
    result = download_file(fetch, entry, dest_dir)
    elapsed = time.perf_counter() - started
    result.path.unlink()
    return entry.size / elapsed / MB


def serve_tcp_threaded(path: Path) -> None:
    """Child: send ``path`` to every connection, one thread each (readinto + sendall)."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(f"127.0.0.1:{srv.getsockname()[1]}", flush=True)

    def send(conn: socket.socket) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        with conn, open(path, "rb") as fh:
            while n := fh.readinto(buf):
                conn.sendall(view[:n])

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=send, args=(conn,), daemon=True).start()


def fleet_child(kind: str, address: str, sha: str, size: int, agents: int, dest: Path, key: str, ca: str) -> None:
    """Child: ``agents`` concurrent downloads (``kind``: http or tcp); prints JSON stats."""
    tune_malloc_for_streaming()
    ca_pem = Path(ca).read_bytes() if ca else None
    entry = FileEntry("blob", sha, size)
    retry = RetryPolicy(max_attempts=60, initial_s=0.1, max_s=1.0)
    results: list[dict] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        folder = dest / f"{kind}{i}"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            if kind == "tcp":
                tcp_durable_transfer(address, folder / "blob", size)
            else:
                download_file(make_fetch(address, key, ca_pem), entry, folder, retry=retry).path.unlink()
            row = {"s": time.perf_counter() - started, "error": ""}
        except Exception as exc:
            row = {"s": time.perf_counter() - started, "error": str(exc)[:200]}
        with lock:
            results.append(row)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"total_s": time.perf_counter() - started, "downloads": results}), flush=True)


def _fleet(
    kind: str, address: str, entry: FileEntry, agents: int, work: Path, key: str, ca: str, nice: int = 0
) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "fleet", kind, address, entry.sha256, str(entry.size),
         str(agents), str(work / f"fleet-{kind}"), key, ca],
        capture_output=True, text=True, cwd=REPO, check=False, preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} fleet child failed: {proc.stderr[-2000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [r["error"] for r in stats["downloads"] if r["error"]]
    return {
        "total_s": round(stats["total_s"], 3),
        "aggregate_mb_s": round(entry.size * (agents - len(errors)) / stats["total_s"] / MB, 1),
        "per_agent_s_max": round(max(r["s"] for r in stats["downloads"]), 3),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def measure(ctx: dict, entry: FileEntry, repeats: int, agents: int, work: Path, tcp_addr: str, slots: int = 0) -> dict:
    """The HTTP(S) figures; ``ctx`` carries rollout.py's helpers (spawn, probe_rpc, percentile, agent_channel);
    ``slots``: the artifact servers' download gate (0: the default, one per 2 cores; -1: none)."""
    spawn = ctx["spawn"]
    key, tls = os.urandom(16).hex(), load_or_create(work / "tls")
    store = str(work / "store")
    procs = []
    try:
        tls_proc, (grpc_addr, https_base) = _split(
            spawn("http", "serve-controller", store, key, str(work / "tls"), "16", str(slots))
        )
        plain_proc, (_, http_base) = _split(spawn("http", "serve-controller", store, key, "", "16", str(slots)))
        tcp_proc, tcp_many = spawn("http", "serve-tcp-threaded", str(work / "blob.bin"))
        procs = [tls_proc, plain_proc, tcp_proc]
        https, plain = make_fetch(https_base, key, tls.ca_cert_pem), make_fetch(http_base, key, None)
        proxy_proc, proxy_base = tls_proxy(http_base, work / "tls")
        proxy = make_fetch(proxy_base, key, tls.ca_cert_pem) if proxy_proc is not None else None
        procs += [proxy_proc] if proxy_proc is not None else []
        http_transfer(https, entry, work / "dl")  # warm-up
        runs: dict[str, list[float]] = {"tcp": [], "https": [], "http": [], "proxy": []}
        for _ in range(repeats):  # alternate: all see the same machine load
            runs["tcp"].append(tcp_durable_transfer(tcp_addr, work / "tcp.out", entry.size))
            runs["https"].append(http_transfer(https, entry, work / "dl"))
            runs["http"].append(http_transfer(plain, entry, work / "dl"))
            if proxy is not None:
                runs["proxy"].append(http_transfer(proxy, entry, work / "dl"))
        figures: dict = {f"{k}_runs_mb_s": [round(x, 1) for x in v] for k, v in runs.items()}
        best = {k: max(v) for k, v in runs.items() if v}
        # A TLS-ending proxy (socat, C and OpenSSL) in front of the plain-HTTP artifact server (docs/deploy.md).
        figures["https_proxy_vs_tcp"] = round(best["proxy"] / best["tcp"], 3) if "proxy" in best else None
        figures.update(
            https_mb_s=round(best["https"], 1), http_plain_mb_s=round(best["http"], 1),
            tcp_durable_mb_s=round(best["tcp"], 1),
            https_vs_tcp=round(best["https"] / best["tcp"], 3), http_plain_vs_tcp=round(best["http"] / best["tcp"], 3),
        )  # fmt: skip
        if agents:
            figures["fleet"] = _fleet_with_probe(ctx, grpc_addr, https_base, entry, agents, work, key, tls.ca_path)
            figures["fleet"]["tcp"] = _fleet("tcp", tcp_many, entry, agents, work, key, "")
            figures["fleet"]["insecure"] = _fleet("http", http_base, entry, agents, work, key, "")
            # Diagnostic: the same fleet with the agents at nice 10, as if they ran on other machines (here they
            # share the controller's cores): what is left is the controller's own interference.
            niced = _fleet_with_probe(ctx, grpc_addr, https_base, entry, agents, work, key, tls.ca_path, nice=10)
            figures["fleet"]["agents_niced"] = {
                k: niced[k] for k in ("aggregate_mb_s", "rpc_p99_ms", "idle_rpc_p99_ms", "rpc_p99_during_vs_idle")
            }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return figures


def tls_proxy(http_base: str, tls_dir: Path) -> tuple[subprocess.Popen | None, str]:
    """socat ending TLS (the controller's certificate) in front of the plain artifact server, where socat is
    installed (nginx is the production choice; the bench machine has neither by default): (process, https base)."""
    if shutil.which("socat") is None:
        return None, ""
    port = free_port()
    upstream = http_base.rsplit(":", 1)[1]
    listen = f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0"
    listen += f",cert={tls_dir / 'server.pem'},key={tls_dir / 'server.key'}"
    proc = subprocess.Popen(["socat", "-b", str(1 << 20), listen, f"TCP:127.0.0.1:{upstream}"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"https://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, ""


def _split(spawned: tuple) -> tuple:
    proc, line = spawned
    return proc, tuple(line.split())


def _fleet_with_probe(ctx: dict, grpc_addr: str, base: str, entry: FileEntry, agents: int, work: Path, key: str,
                      ca: Path, nice: int = 0) -> dict:  # fmt: skip
    """Idle unary RPC latency, then the HTTPS fleet while the same RPC is probed (controller in one process)."""
    channel = ctx["agent_channel"](grpc_addr, own_connection=True)
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    idle = ctx["probe_rpc"](channel, stop)
    stop = threading.Event()
    during: list[float] = []
    prober = threading.Thread(target=lambda: during.extend(ctx["probe_rpc"](channel, stop)))
    prober.start()
    try:
        figures = _fleet("https", base, entry, agents, work, key, str(ca), nice)
    finally:
        stop.set()
        prober.join()
        channel.close()
    p99_idle, p99_during = ctx["percentile"](idle, 99), ctx["percentile"](during, 99)
    figures.update(
        agents=agents, rpc_calls=len(during), idle_rpc_p99_ms=round(p99_idle, 2), rpc_p99_ms=round(p99_during, 2),
        rpc_p99_during_vs_idle=round(p99_during / p99_idle, 2),
    )  # fmt: skip
    return figures


def print_summary(figures: dict) -> None:
    """The human-readable lines before the JSON (HTTP(S) first, then the gRPC figures)."""
    fl = figures["fleet"]
    hx = figures["http"]
    print(f"fsync policy: {figures['fsync_policy']}")
    print(
        f"one agent: HTTPS {hx['https_mb_s']} MB/s, HTTP {hx['http_plain_mb_s']} MB/s, TCP {hx['tcp_durable_mb_s']} "
        f"MB/s -> transfer_vs_tcp {figures['transfer_vs_tcp']} (insecure {figures['transfer_vs_tcp_insecure']}, "
        f"socat TLS proxy in front of plain HTTP {figures['transfer_vs_tcp_tls_proxy']})"
    )
    if figures["http_fleet"]:
        hf = figures["http_fleet"]
        print(
            f"{hf['agents']} agents HTTPS {hf['aggregate_mb_s']} MB/s vs TCP {hf['tcp']['aggregate_mb_s']} MB/s -> "
            f"fleet_aggregate_vs_tcp {figures['fleet_aggregate_vs_tcp']} "
            f"(insecure {figures['fleet_aggregate_vs_tcp_insecure']}); RPC p99 {hf['rpc_p99_ms']} ms vs "
            f"{hf['idle_rpc_p99_ms']} ms idle -> rpc_p99_during_vs_idle {figures['rpc_p99_during_vs_idle']}; "
            f"agents at nice 10 (as if remote): {hf['agents_niced']}"
        )
    print(
        f"one agent: gRPC {figures['grpc_mb_s']} MB/s, TCP file-to-file {figures['tcp_file_mb_s']} MB/s, "
        f"TCP memory {figures['tcp_memory_mb_s']} MB/s -> grpc_transfer_vs_tcp {figures['grpc_transfer_vs_tcp']}; "
        f"local write + fsync {figures['durable_write_mb_s']} MB/s"
    )
    print(
        f"ceilings: bare grpcio stream {figures['grpc_bare_mb_s']} MB/s = {figures['grpc_bare_vs_tcp_memory']} of "
        f"TCP memory, {figures['grpc_bare_vs_tcp']} of TCP file-to-file (the download keeps "
        f"{figures['transfer_vs_grpc_bare']} of it); TCP + fsync "
        f"{figures['tcp_durable_mb_s']} MB/s ({figures['tcp_durable_vs_tcp']} of TCP without) -> "
        f"transfer_vs_tcp_durable {figures['transfer_vs_tcp_durable']}"
    )
    if fl:
        print(
            f"{fl['agents']} agents x {figures['blob_mb']} MB: {fl['total_s']} s ({fl['aggregate_mb_s']} MB/s), "
            f"errors {fl['errors']}; unary RPC p99 {fl['rpc_p99_ms']} ms during vs {figures['idle_rpc_p99_ms']} ms idle"
        )


def main(argv: list[str]) -> None:
    if argv[0] == "serve-controller":
        serve_controller(Path(argv[1]), argv[2], argv[3], int(argv[4]), int(argv[5]) if len(argv) > 5 else 0)
    elif argv[0] == "gate":
        import rollout_gate

        rollout_gate.main(argv[1:])
    elif argv[0] == "serve-tcp-threaded":
        serve_tcp_threaded(Path(argv[1]))
    elif argv[0] == "fleet":
        fleet_child(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), Path(argv[6]), argv[7], argv[8])
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)
