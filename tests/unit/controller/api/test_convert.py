"""controller/api/convert.py: hardware and devices between the database and protobuf."""

from __future__ import annotations

import json

import pytest

from controller.api.convert import (
    device_to_pb,
    hardware_from_pb,
    hardware_to_pb,
    install_state_name,
    install_state_value,
    profile_to_pb,
)
from controller.store.tables import Device
from shared.errors import InvalidArgument
from shared.pb import common_pb2
from shared.profiles import DeviceProfile

HARDWARE = {
    "hostname": "edge-1",
    "os": "Linux",
    "arch": "x86_64",
    "cpu_model": "Some CPU",
    "cpu_cores": 8,
    "ram_bytes": 16 << 30,
    "disk_free_bytes": 100 << 30,
    "execution_providers": ["CPUExecutionProvider", "CUDAExecutionProvider"],
    "foundry_local_available": True,
    "gpu_names": ["GPU 0"],
}


def test_hardware_round_trip() -> None:
    assert hardware_from_pb(hardware_to_pb(HARDWARE)) == HARDWARE


def test_hardware_to_pb_ignores_unknown_keys() -> None:
    assert hardware_from_pb(hardware_to_pb({**HARDWARE, "not_a_field": 1})) == HARDWARE


def test_hardware_from_pb_bounds_strings_and_lists() -> None:
    with pytest.raises(InvalidArgument, match="hardware strings must be <= 512 characters"):
        hardware_from_pb(common_pb2.Hardware(hostname="h" * 513))
    with pytest.raises(InvalidArgument, match="hardware lists must have <= 64 entries"):
        hardware_from_pb(common_pb2.Hardware(gpu_names=["g"] * 65))


def test_install_state_names_round_trip() -> None:
    for name in ("IDLE", "DOWNLOAD", "DONE", "FAILED"):
        assert install_state_name(install_state_value(name)) == name
    assert install_state_name(install_state_value("")) == "UNSPECIFIED"


def test_device_to_pb() -> None:
    device = Device(
        agent_id="dev-1",
        hostname="edge-1",
        profile="cpu-int4",
        profile_pinned=True,
        hardware_json=json.dumps(HARDWARE),
        secret_hash="",
        enrolled_at=10.0,
        last_seen=20.0,
        installed_name="m",
        installed_version="v2",
        install_state="DONE",
        serving_url="http://edge-1:8080",
        runtime="ort-genai",
        active_provider="CPUExecutionProvider",
        healthy=True,
    )
    pb = device_to_pb(device, online=False)
    assert (pb.agent_id, pb.hostname, pb.profile, pb.profile_pinned) == ("dev-1", "edge-1", "cpu-int4", True)
    assert pb.status == common_pb2.DEVICE_STATUS_OFFLINE
    assert (pb.last_seen_unix, pb.enrolled_unix) == (20.0, 10.0)
    assert (pb.installed.name, pb.installed.version) == ("m", "v2")
    assert install_state_name(pb.install_state) == "DONE"
    assert (pb.serving_url, pb.runtime, pb.active_provider, pb.healthy) == (
        "http://edge-1:8080",
        "ort-genai",
        "CPUExecutionProvider",
        True,
    )
    assert hardware_from_pb(pb.hardware) == HARDWARE
    assert pb.awaiting_enrollment  # no secret: reset, waiting for the agent to enroll again
    device.secret_hash = "abc"
    online = device_to_pb(device, online=True)
    assert online.status == common_pb2.DEVICE_STATUS_ONLINE and not online.awaiting_enrollment


def test_profile_carries_its_task_schema_to_agents() -> None:
    schema = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
    pb = profile_to_pb(DeviceProfile(name="p", precision="int4", output_schema=schema, enforce_schema=True))
    assert json.loads(pb.output_schema_json) == schema
    assert pb.enforce_schema is True
    plain = profile_to_pb(DeviceProfile(name="q", precision="int4"))
    assert plain.output_schema_json == ""
    assert plain.enforce_schema is False
