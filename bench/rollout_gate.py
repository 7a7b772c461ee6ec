"""The artifact server's download gate against RPC latency (``python bench/rollout.py http gate``):

``--agents`` HTTPS downloads of one ``--size-mb`` blob at once, through the controller's artifact server with each
gate setting in ``--slots`` (-1: no gate, 0: the default, one per 2 cores, K: K at once), while the same
process's gRPC server answers a unary Heartbeat probed from here; and the same fleet over raw TCP. Per setting:
``rpc_p99_during_vs_idle``, aggregate MB/s and its ratio to raw TCP, 503 refusals are absorbed by the agents.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import rollout  # noqa: E402
import rollout_http  # noqa: E402
from transfer_baselines import MB, make_blob  # noqa: E402

from controller.core.tls import load_or_create  # noqa: E402
from controller.registry.blobs import BlobStore  # noqa: E402
from shared.manifest import FileEntry  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--slots", default="-1,0,2", help="gate settings to compare, comma-separated")
    ap.add_argument("--agents-nice", type=int, default=0, help="run the agents at this nice value (10: as if remote)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-gate-"))
    blob = make_blob(work / "blob.bin", int(args.size_mb * MB))
    ref = BlobStore(work / "store").put_file(blob, link=True)
    entry = FileEntry("blob", ref.sha256, ref.size)
    key, tls = os.urandom(16).hex(), load_or_create(work / "tls")
    ctx = {"spawn": rollout._spawn, "probe_rpc": rollout.probe_rpc, "percentile": rollout.percentile,
           "agent_channel": rollout.agent_channel}  # fmt: skip
    tcp_proc, tcp_many = rollout._spawn("http", "serve-tcp-threaded", str(blob))
    out: dict = {"agents": args.agents, "blob_mb": args.size_mb, "agents_nice": args.agents_nice}
    out["cpu_count"] = os.cpu_count()
    try:
        tcp = rollout_http._fleet("tcp", tcp_many, entry, args.agents, work, key, "")
        out["tcp_aggregate_mb_s"] = tcp["aggregate_mb_s"]
        for slots in (int(s) for s in args.slots.split(",")):
            proc, line = rollout._spawn(
                "http", "serve-controller", str(work / "store"), key, str(work / "tls"), "16", str(slots)
            )
            grpc_addr, base = line.split()
            try:
                fleet = rollout_http._fleet_with_probe(
                    ctx, grpc_addr, base, entry, args.agents, work, key, tls.ca_path, nice=args.agents_nice
                )
            finally:
                proc.kill()
                proc.wait()
            fleet["fleet_aggregate_vs_tcp"] = round(fleet["aggregate_mb_s"] / tcp["aggregate_mb_s"], 3)
            out[f"slots_{slots}"] = fleet
            print(f"slots {slots}: {fleet}", flush=True)
    finally:
        tcp_proc.kill()
        tcp_proc.wait()
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
