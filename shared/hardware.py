"""What an agent finds out about its machine: CPU, memory, disk, and the execution providers that work."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class HardwareInfo:
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cpu_cores: int
    ram_bytes: int
    disk_free_bytes: int
    execution_providers: list[str] = field(default_factory=list)
    foundry_local_available: bool = False
    gpu_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _providers() -> list[str]:
    """Execution providers onnxruntime(-genai) can actually use here (not merely compiled in)."""
    try:
        import onnxruntime  # light compared with genai; both ship the same provider list

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        log.warning("onnxruntime is not installed: reporting CPUExecutionProvider only")
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in providers and not _gpu_names():
        providers.remove("CUDAExecutionProvider")  # compiled in, but no device: would fall back to CPU
    return providers


def _gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def foundry_local_available() -> bool:
    """Whether the Foundry Local SDK (with its native runtime) imports on this machine."""
    try:
        import foundry_local_sdk  # noqa: F401
    except Exception:  # ImportError or a native-library load failure
        return False
    return True


def detect(data_dir: Path | None = None, check_foundry: bool = True) -> HardwareInfo:
    disk_root = Path(data_dir) if data_dir else Path.cwd()
    disk_root.mkdir(parents=True, exist_ok=True)
    return HardwareInfo(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        disk_free_bytes=shutil.disk_usage(disk_root).free,
        execution_providers=_providers(),
        foundry_local_available=foundry_local_available() if check_foundry else False,
        gpu_names=_gpu_names(),
    )
