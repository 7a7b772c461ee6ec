"""Create (or complete) the material that controller replicas share, in a controller data dir.

    python deploy/controller_secrets.py --data-dir DIR [--tls-host NAME ...]

Writes what a controller would create at its first start, with the same functions and file names:
``tls/ca.pem`` + ``tls/ca.key`` (the CA agents pin), ``tls/server.pem`` + ``tls/server.key`` (the gRPC and
artifact server certificate, with every ``--tls-host`` as a subject name), ``keys/manifest_ed25519.pem`` (the
manifest signing key), ``admin.token`` and ``artifact_token.key``. Existing files are kept, so an existing
controller's data dir keeps its CA and keys; delete ``tls/server.pem`` and ``tls/server.key`` first to reissue the
server certificate for new names (agents pin the CA, not the server certificate). Used by the compose file's
``secrets`` service and, for Kubernetes, before ``kubectl create secret`` (docs/deploy.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.core.auth import load_or_create_admin_token
from controller.core.tls import load_or_create
from shared.manifest import load_or_create_signing_key

SIGNING_KEY = Path("keys") / "manifest_ed25519.pem"


def create(data_dir: Path, tls_hosts: list[str]) -> list[Path]:
    """Create what is missing; the paths of the shared files, relative to ``data_dir``."""
    from controller.registry.urltokens import KEY_FILE, load_or_create_key

    data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create(data_dir / "tls", tls_hosts)
    load_or_create_signing_key(data_dir / SIGNING_KEY)
    load_or_create_admin_token(data_dir / "admin.token")
    load_or_create_key(data_dir)
    names = ["tls/ca.pem", "tls/ca.key", "tls/server.pem", "tls/server.key", str(SIGNING_KEY), "admin.token"]
    return [Path(name) for name in [*names, KEY_FILE]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the controller data dir to create or complete")
    parser.add_argument(
        "--tls-host", action="append", default=[], help="DNS name/IP agents use to reach the controllers (repeat)"
    )
    args = parser.parse_args(argv)
    for path in create(args.data_dir, args.tls_host):
        print(args.data_dir / path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
