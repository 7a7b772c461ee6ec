"""A real controller on 127.0.0.1 (ephemeral port, TLS) and helpers to make real agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from controller.api.server import ControllerServer
from controller.cli.common import AdminConnection
from controller.settings import ControllerSettings


def make_settings(data_dir: Path, db_url: str = "", **kw: object) -> ControllerSettings:
    return ControllerSettings(listen="127.0.0.1:0", data_dir=data_dir, db_url=db_url, **kw)  # type: ignore[arg-type]


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., ControllerServer]]:
    started: list[ControllerServer] = []

    def start(data_dir: Path | None = None, db_url: str = "", **kw: object) -> ControllerServer:
        server = ControllerServer(make_settings(data_dir or tmp_path / "controller", db_url, **kw)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def controller(controller_factory: Callable[..., ControllerServer]) -> ControllerServer:
    return controller_factory()


def admin(server: ControllerServer, token: str | None = None) -> AdminConnection:
    tls = server.app.tls
    return AdminConnection(
        server.address, server.app.admin_token if token is None else token, tls.ca_cert_pem if tls else None
    )


def new_token(server: ControllerServer, **kw: int) -> str:
    from controller.auth import create_enrollment_token

    return create_enrollment_token(server.app.store, **kw)[0]


def agent_settings(server: ControllerServer, data_dir: Path, **kw: object) -> AgentSettings:
    tls = server.app.tls
    settings = AgentSettings(
        controller=server.address,
        data_dir=data_dir,
        enrollment_token=new_token(server),
        ca_cert=tls.ca_path if tls else None,
        insecure=tls is None,
        check_foundry=False,
        heartbeat_interval_s=0.2,
    )
    for key, value in kw.items():
        setattr(settings, key, value)
    return settings
