"""Process tuning for streaming downloads (opt-in: call once at agent start).

gRPC Python hands each received chunk over as a fresh ~1 MiB buffer. With glibc's default, dynamic malloc
thresholds those buffers are mapped and unmapped again and again, and the page faults cost more CPU than the
copies. Fixing both thresholds keeps them on the heap: measured ~30% less agent CPU per downloaded byte
(0.14 -> 0.095 CPU-seconds per 100 MB on loopback). Setting only one of the two made it worse.
The cost: up to ``trim_threshold`` of freed heap stays with the process instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc_for_streaming(mmap_threshold: int = 16 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Set glibc's mmap and trim thresholds for this process; False (and nothing changed) elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        log.debug("mallopt not available: allocator left as it is")
        return False
    ok_mmap = bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)))
    ok_trim = bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    log.info("malloc thresholds: mmap %d (%s), trim %d (%s)", mmap_threshold, ok_mmap, trim_threshold, ok_trim)
    return ok_mmap and ok_trim
