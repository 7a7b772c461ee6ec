"""Generate the protobuf/gRPC stubs from ``protos/`` into ``shared/pb/`` (run: ``python -m shared.protogen``).

The generated modules import each other as ``slmops.v1.x_pb2``; they are rewritten to package-relative
imports so they live under ``shared.pb.slmops.v1``. A stamp file records the hash of the .proto sources
so a stale build is detected at import time (see ``shared/pb/__init__.py``).
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = Path(__file__).resolve().parent / "pb"
STAMP = OUT_DIR / "_STAMP"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("slmops/v1/*.proto"))


def proto_hash() -> str:
    digest = hashlib.sha256()
    for path in proto_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def generate() -> list[Path]:
    """Run protoc (grpcio-tools) and fix imports; returns the generated files."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("grpcio-tools is not installed: pip install 'slmops[dev]' (or grpcio-tools)") from exc
    import importlib.resources

    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *[str(f) for f in files],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    out = OUT_DIR / "slmops" / "v1"
    for pkg in (OUT_DIR / "slmops", out):
        (pkg / "__init__.py").touch()
    generated = sorted(out.glob("*_pb2*.py*"))
    pattern = re.compile(r"^from slmops\.v1 import", re.MULTILINE)
    for path in generated:
        text = path.read_text()
        path.write_text(pattern.sub("from shared.pb.slmops.v1 import", text))
    STAMP.write_text(proto_hash() + "\n")
    return generated


def main() -> None:
    generated = generate()
    print(f"generated {len(generated)} files in {OUT_DIR / 'slmops' / 'v1'}")


if __name__ == "__main__":
    sys.exit(main())
