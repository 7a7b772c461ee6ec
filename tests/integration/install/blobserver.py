"""A tiny AgentService for the install tests: DownloadArtifact served from a real BlobStore through
``stream_artifact`` on a real gRPC server (127.0.0.1, ephemeral port). It counts what it sends and can
damage chunks on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.registry.blobs import BlobStore
from controller.registry.transfer import DownloadGate
from controller.registry.transfer_pb import add_agent_service, stream_artifact
from shared.manifest import FileEntry, Manifest, sign
from shared.pb import agent_pb2, agent_pb2_grpc

# (request sha, chunk) -> chunk to send instead (or the same one)
Tamper = Callable[[str, agent_pb2.ArtifactChunk], agent_pb2.ArtifactChunk]


@dataclass
class Served:
    sha: str
    offset: int
    bytes_sent: int = 0


class BlobServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: BlobStore, gate: DownloadGate | None = None, wire: bool = False) -> None:
        self.store = store
        self.gate = gate
        self.wire = wire  # pre-encoded chunks (needs serve(..., wire=True)); tamper sees bytes then
        self.tamper: Tamper | None = None
        self.served: list[Served] = []
        self.heartbeats = 0
        self._lock = threading.Lock()

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.served)

    def bytes_for(self, sha: str) -> int:
        return sum(s.bytes_sent for s in self.served if s.sha == sha)

    def DownloadArtifact(self, request, context):
        record = Served(request.sha256, request.offset)
        with self._lock:
            self.served.append(record)
        stream = stream_artifact(
            self.store,
            request.sha256,
            request.offset,
            request.max_bytes_per_s,
            gate=self.gate,
            context=context,
            wire=self.wire,
        )
        return self._counted(stream, record)

    def _counted(self, stream: Iterator[agent_pb2.ArtifactChunk], record: Served) -> Iterator:
        for chunk in stream:
            if self.tamper is not None:
                chunk = self.tamper(record.sha, chunk)
            record.bytes_sent += len(chunk) if isinstance(chunk, bytes) else len(chunk.data)
            yield chunk

    def Heartbeat(self, request, context):
        self.heartbeats += 1
        return agent_pb2.HeartbeatResponse(heartbeat_interval_s=1)


@contextmanager
def serve(servicer: agent_pb2_grpc.AgentServiceServicer, max_workers: int = 8, wire: bool = False) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    if wire:
        add_agent_service(servicer, server)
    else:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@dataclass
class Publisher:
    """Signs manifests like the controller does and puts the files in the blob store."""

    store: BlobStore
    key: Ed25519PrivateKey
    work: Path
    made: dict[str, Manifest] = field(default_factory=dict)

    def publish(
        self, name: str, version: str, files: dict[str, bytes], profile: str = "cpu-test"
    ) -> tuple[bytes, bytes, Manifest]:
        folder = self.work / f"{name}-{version}-{profile}"
        for rel, data in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        entries: list[FileEntry] = self.store.put_folder(folder)
        manifest = Manifest(
            name=name,
            version=version,
            profile=profile,
            precision="int4",
            execution_provider="cpu",
            files=entries,
            created_unix=time.time(),
        )
        data = manifest.to_json()
        self.made[version] = manifest
        return data, sign(data, self.key), manifest
