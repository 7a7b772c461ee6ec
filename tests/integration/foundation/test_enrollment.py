"""Enrollment, identity, heartbeats and credentials against a real controller over TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent.daemon import Agent, enroll_or_load
from controller.core.settings import ControllerSettings
from controller.fleet import devices as fleet
from controller.store.tables import Device
from shared.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable, UnknownProfile
from shared.hardware import detect
from shared.pb import admin_pb2, common_pb2
from tests.fixtures.controller import admin, agent_settings


def test_agent_enrolls_heartbeats_and_restart_keeps_id(controller, tmp_path: Path) -> None:
    settings = agent_settings(controller, tmp_path / "agent", profile="cpu-fp32")
    first = Agent(settings)
    first.heartbeat_once()
    agent_id = first.agent_id
    assert agent_id.startswith("agt-")
    # Restart: the saved identity is used, the (already used) token is not needed again.
    settings.enrollment_token = ""
    again = Agent(settings)
    assert again.agent_id == agent_id
    again.heartbeat_once()
    devices = admin(controller)("ListDevices", admin_pb2.ListDevicesRequest()).devices
    assert [d.agent_id for d in devices] == [agent_id]
    assert devices[0].profile == "cpu-fp32" and devices[0].profile_pinned
    assert devices[0].status == common_pb2.DEVICE_STATUS_ONLINE
    assert devices[0].hardware.cpu_cores >= 1


def test_profile_auto_matched_from_hardware(controller, tmp_path: Path) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "a"))
    # This machine has only the CPU provider and plenty of RAM: the highest-priority CPU profile wins.
    assert agent.identity.profile == "cpu-int4"


def test_device_shown_offline_after_deadline(controller_factory, tmp_path: Path) -> None:
    server = controller_factory(heartbeat_interval_s=1, offline_after_s=1)
    agent = Agent(agent_settings(server, tmp_path / "a"))
    agent.heartbeat_once()
    conn = admin(server)
    assert conn("ListDevices", admin_pb2.ListDevicesRequest()).devices[0].status == common_pb2.DEVICE_STATUS_ONLINE
    device = fleet.get_device(server.app.store, agent.agent_id)
    assert fleet.is_online(device, 1, now=device.last_seen + 1.0)
    assert not fleet.is_online(device, 1, now=device.last_seen + 1.3)
    with server.app.store.session() as s:  # 1.3 s of silence, without waiting for it
        row = s.get(Device, agent.agent_id)
        row.last_seen -= 1.3
        s.add(row)
    assert conn("ListDevices", admin_pb2.ListDevicesRequest()).devices[0].status == common_pb2.DEVICE_STATUS_OFFLINE
    agent.heartbeat_once()
    assert conn("ListDevices", admin_pb2.ListDevicesRequest()).devices[0].status == common_pb2.DEVICE_STATUS_ONLINE


def test_controller_restart_keeps_devices_and_profiles(controller_factory, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "ctl"
    server = controller_factory(data, db_url)
    agent = Agent(agent_settings(server, tmp_path / "a", profile="cpu-int8"))
    agent.heartbeat_once()
    server.stop(grace=0)

    restarted = controller_factory(data, db_url)  # same data dir: same CA, key, admin token
    conn = admin(restarted)
    devices = conn("ListDevices", admin_pb2.ListDevicesRequest()).devices
    assert [(d.agent_id, d.profile) for d in devices] == [(agent.agent_id, "cpu-int8")]
    names = {p.name for p in conn("ListProfiles", admin_pb2.ListProfilesRequest()).profiles}
    assert {"cpu-int4", "cpu-int8", "cpu-fp32", "cuda-fp16"} <= names
    # The agent reconnects to the restarted controller (new port) with its saved identity and CA.
    agent.client.close()
    reconnected = Agent(agent_settings(restarted, tmp_path / "a", enrollment_token=""))
    reconnected.heartbeat_once()
    assert reconnected.agent_id == agent.agent_id


def test_bad_enrollment_token_is_refused(controller, tmp_path: Path) -> None:
    settings = agent_settings(controller, tmp_path / "a", enrollment_token="slmenr.nope.nope")
    with pytest.raises(Unauthenticated, match="not recognised"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))
    settings.enrollment_token = "garbage"
    with pytest.raises(Unauthenticated, match="malformed"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))


def test_token_use_limit(controller, tmp_path: Path) -> None:
    from tests.fixtures.controller import new_token

    token = new_token(controller, max_uses=1)
    enroll_or_load(
        agent_settings(controller, tmp_path / "a", enrollment_token=token), detect(tmp_path, check_foundry=False)
    )
    with pytest.raises(Unauthenticated, match="already used"):
        enroll_or_load(agent_settings(controller, tmp_path / "b", enrollment_token=token), detect(tmp_path, False))


def test_wrong_ca_is_refused_with_tls_message(controller_factory, tmp_path: Path) -> None:
    server = controller_factory(tmp_path / "one")
    other = controller_factory(tmp_path / "two")  # another controller: another CA
    settings = agent_settings(server, tmp_path / "a", ca_cert=other.app.tls.ca_path)
    with pytest.raises(Unavailable, match="not signed by the CA"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))


def test_unknown_profile_is_refused(controller, tmp_path: Path) -> None:
    settings = agent_settings(controller, tmp_path / "a", profile="no-such-profile")
    with pytest.raises(UnknownProfile, match="no-such-profile"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))


def test_missing_ca_and_token_give_config_errors(controller, tmp_path: Path) -> None:
    settings = agent_settings(controller, tmp_path / "a", ca_cert=None, insecure=False)
    with pytest.raises(ConfigError, match="CA certificate"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))
    settings = agent_settings(controller, tmp_path / "b", enrollment_token="")
    with pytest.raises(ConfigError, match="--token"):
        enroll_or_load(settings, detect(tmp_path, check_foundry=False))


def test_admin_credentials(controller) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        admin(controller, token="")("ListDevices", admin_pb2.ListDevicesRequest())
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        admin(controller, token="slmadm_wrong")("ListDevices", admin_pb2.ListDevicesRequest())
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_agent_secret_is_checked(controller, tmp_path: Path) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "a"))
    agent.client.set_credentials(agent.agent_id, "forged")
    with pytest.raises(PermissionDenied, match="wrong secret"):
        agent.heartbeat_once()
    agent.client.set_credentials("agt-unknown", "x")
    with pytest.raises(Unauthenticated, match="unknown agent"):
        agent.heartbeat_once()


def test_malformed_profile_yaml_names_file_and_field(tmp_path: Path) -> None:
    from controller.api.server import ControllerServer

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.yaml").write_text("name: edge-x\nprecision: int3\n")
    settings = ControllerSettings(listen="127.0.0.1:0", data_dir=tmp_path / "c", profiles_dir=profiles)
    with pytest.raises(ConfigError) as err:
        ControllerServer(settings)
    assert "bad.yaml" in str(err.value) and "precision" in str(err.value)
    (profiles / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ControllerServer(settings)


def test_insecure_mode(controller_factory, tmp_path: Path) -> None:
    server = controller_factory(tmp_path / "c", insecure=True)
    agent = Agent(agent_settings(server, tmp_path / "a"))
    agent.heartbeat_once()
    assert admin(server)("ListDevices", admin_pb2.ListDevicesRequest()).devices[0].agent_id == agent.agent_id
