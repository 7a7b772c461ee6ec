"""Disk space checks before a download."""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.errors import InstallError


class DiskSpaceError(InstallError):
    """Not enough free disk space for a download; nothing was fetched."""

    code = "RESOURCE_EXHAUSTED"


def free_bytes(path: Path) -> int:
    """Free space on the filesystem holding ``path`` (the nearest existing parent)."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_space(path: Path, needed: int, reserve: int) -> None:
    free = free_bytes(path)
    if needed + reserve > free:
        raise DiskSpaceError(
            f"not enough disk space under {path}: the download needs {needed / 1e6:.1f} MB plus a "
            f"{reserve / 1e6:.1f} MB reserve, {free / 1e6:.1f} MB free; free space or prune old model versions"
        )
