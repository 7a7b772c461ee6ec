"""Generated protobuf stubs (built by ``make protos``; not committed).

Import the modules through this package: ``from shared.pb import agent_pb2, agent_pb2_grpc``.
A missing or stale build raises :class:`shared.errors.StubsMissing` with the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import StubsMissing

_HERE = Path(__file__).resolve().parent
_FIX = "run `make protos` (or `python -m shared.protogen`) in the slmops checkout"


def _check() -> None:
    stamp = _HERE / "_STAMP"
    if not (_HERE / "slmops" / "v1" / "agent_pb2.py").exists() or not stamp.exists():
        raise StubsMissing(f"generated gRPC stubs are missing under {_HERE}: {_FIX}")
    protos = _HERE.parent.parent / "protos"
    if protos.is_dir():  # a source checkout: make sure the stubs match the .proto files
        from shared.protogen import proto_hash

        if stamp.read_text().strip() != proto_hash():
            raise StubsMissing(f"generated gRPC stubs are older than the .proto files: {_FIX}")


_check()

from shared.pb.slmops.v1 import (  # noqa: E402
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
)

__all__ = ["admin_pb2", "admin_pb2_grpc", "agent_pb2", "agent_pb2_grpc", "common_pb2"]
