"""Domain <-> protobuf for the foundation's types (devices, profiles, hardware)."""

from __future__ import annotations

import json

from controller.store.tables import Device
from shared.errors import InvalidArgument
from shared.pb import admin_pb2, common_pb2
from shared.profiles import DeviceProfile

_MAX_LIST = 64
_MAX_STR = 512


def hardware_from_pb(hw: common_pb2.Hardware) -> dict:
    """Validates and converts a reported Hardware message."""
    strings = (hw.hostname, hw.os, hw.arch, hw.cpu_model)
    if any(len(s) > _MAX_STR for s in strings):
        raise InvalidArgument(f"hardware strings must be <= {_MAX_STR} characters")
    if len(hw.execution_providers) > _MAX_LIST or len(hw.gpu_names) > _MAX_LIST:
        raise InvalidArgument(f"hardware lists must have <= {_MAX_LIST} entries")
    return {
        "hostname": hw.hostname,
        "os": hw.os,
        "arch": hw.arch,
        "cpu_model": hw.cpu_model,
        "cpu_cores": hw.cpu_cores,
        "ram_bytes": hw.ram_bytes,
        "disk_free_bytes": hw.disk_free_bytes,
        "execution_providers": list(hw.execution_providers),
        "foundry_local_available": hw.foundry_local_available,
        "gpu_names": list(hw.gpu_names),
    }


def hardware_to_pb(hw: dict) -> common_pb2.Hardware:
    fields = {k: v for k, v in hw.items() if k in common_pb2.Hardware.DESCRIPTOR.fields_by_name}
    return common_pb2.Hardware(**fields)


def profile_to_pb(p: DeviceProfile) -> common_pb2.Profile:
    return common_pb2.Profile(
        name=p.name,
        description=p.description,
        precision=p.precision,
        execution_provider=p.execution_provider,
        max_memory_mb=p.max_memory_mb,
        max_ttft_ms=p.max_ttft_ms,
        max_latency_ms=p.max_latency_ms,
        min_tokens_per_s=p.min_tokens_per_s,
        min_ram_mb=p.min_ram_mb,
        min_cpu_cores=p.min_cpu_cores,
        requires_providers=p.requires_providers,
        runtime=p.runtime,
        int4_block_size=p.int4_block_size,
        int4_accuracy_level=p.int4_accuracy_level,
        priority=p.priority,
        sample_prompts=p.sample_prompts,
        sample_cap=p.sample_cap,
        output_schema_json=json.dumps(p.output_schema, sort_keys=True) if p.output_schema else "",
        enforce_schema=p.enforce_schema,
    )


def install_state_value(name: str) -> int:
    return common_pb2.InstallState.Value(f"INSTALL_STATE_{name or 'UNSPECIFIED'}")


def install_state_name(value: int) -> str:
    return common_pb2.InstallState.Name(value).removeprefix("INSTALL_STATE_")


def device_to_pb(d: Device, online: bool) -> admin_pb2.Device:
    return admin_pb2.Device(
        agent_id=d.agent_id,
        hostname=d.hostname,
        profile=d.profile,
        status=common_pb2.DEVICE_STATUS_ONLINE if online else common_pb2.DEVICE_STATUS_OFFLINE,
        last_seen_unix=d.last_seen,
        installed=common_pb2.ModelRef(name=d.installed_name, version=d.installed_version),
        hardware=hardware_to_pb(json.loads(d.hardware_json or "{}")),
        install_state=install_state_value(d.install_state),
        serving_url=d.serving_url,
        runtime=d.runtime,
        active_provider=d.active_provider,
        healthy=d.healthy,
        enrolled_unix=d.enrolled_at,
        profile_pinned=d.profile_pinned,
        awaiting_enrollment=not d.secret_hash,
    )
