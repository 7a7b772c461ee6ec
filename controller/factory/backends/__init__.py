"""Job backends: where a job's stages (and a search's trials) run, chosen by the controller's ``jobs`` setting.

- ``local`` (default): in the job's own worker process on the controller's machine; nothing to install.
- ``ray://HOST:PORT``: a Ray cluster through its client server (port 10001 on the head by default).
- ``ray:auto``: the Ray cluster named by ``RAY_ADDRESS`` (``HOST:6379``, ``ray://HOST:10001`` or ``auto``).

Every Ray worker needs ``pip install 'slmops[controller,ray]'`` (and torch, as on the controller).
"""

from __future__ import annotations

import logging
import os
import socket

from controller.factory.backends.base import TaskRunner
from controller.factory.backends.local import LocalTaskRunner
from shared.errors import ConfigError, Unavailable
from shared.retry import Policy

log = logging.getLogger(__name__)

__all__ = ["LocalTaskRunner", "TaskRunner", "check_spec", "ray_address", "runner_from_spec"]

SPEC_HELP = "use local, ray://HOST:PORT (the Ray head's client port, 10001 by default) or ray:auto (RAY_ADDRESS)"


def check_spec(spec: str, source: str = "settings") -> str:
    """The spec normalised (``local``, ``ray:auto``, ``ray://HOST:PORT``); ConfigError naming it otherwise."""
    value = (spec or "local").strip()
    if value in ("local", "ray:auto"):
        return value
    if value.startswith("ray://"):
        host, sep, port = value[len("ray://") :].rpartition(":")
        if host and sep and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise ConfigError(source, "jobs", f"'{spec}' is not a job backend: {SPEC_HELP}")


def ray_address(spec: str) -> str:
    """The address ``ray.init`` gets for a ``ray`` spec (``ray:auto``: ``RAY_ADDRESS``, which must be set)."""
    spec = check_spec(spec)
    if spec != "ray:auto":
        return spec
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        raise ConfigError(
            "settings",
            "jobs",
            "'ray:auto' attaches to the cluster in RAY_ADDRESS, which is not set: "
            "export RAY_ADDRESS=HOST:6379 (or ray://HOST:10001) where the controller runs, or use --jobs ray://HOST:PORT",
        )
    return address


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Unavailable naming ``address`` when nothing accepts a TCP connection there (``auto`` is not probed)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        kind = "client server (`ray start --head` opens it on 10001)" if address.startswith("ray://") else "GCS (6379)"
        raise Unavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): check that the head is running "
            f"(`ray status` on it), that this machine can reach {host} port {port}, and that the port is the "
            f"head's {kind}"
        ) from exc


ATTACH = Policy("ray-attach", base_s=2.0, cap_s=10.0, max_attempts=3)


def _attach(runner_cls: type[TaskRunner], address: str) -> TaskRunner:
    try:
        return runner_cls(address)  # type: ignore[call-arg]
    except BaseException:
        import ray

        ray.shutdown()  # a half-made connection would make the next ray.init a no-op
        raise


def runner_from_spec(spec: str) -> TaskRunner:
    """The task runner of a ``jobs`` spec, connected; ConfigError for a bad spec, Unavailable when unreachable."""
    if check_spec(spec) == "local":
        return LocalTaskRunner()
    address = ray_address(spec)
    probe(address)
    try:
        from controller.factory.backends.ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "settings", "jobs", f"'{spec}' needs Ray on the controller: pip install 'slmops[controller,ray]' ({exc})"
        ) from exc
    try:
        # The head starts a client server per connection; on a busy head that start can fail once: try again.
        return ATTACH.call(lambda: _attach(RayTaskRunner, address), f"attach to the Ray cluster at {address}", None,
                           retry_on=(ConnectionError, RuntimeError, TimeoutError), logger=log)  # fmt: skip
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise Unavailable(
            f"could not attach to the Ray cluster at {address}: {exc}; check `ray status` on the head and that "
            "its Ray and Python versions match this machine's"
        ) from exc
