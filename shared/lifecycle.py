"""Child processes that must not outlive the process that started them (e.g. the agents of `slmops demo`).

The parent sets ``SLMOPS_EXIT_WITH_PARENT=<its pid>`` in the child's environment; the child calls
:func:`exit_with_parent` first thing. On Linux the kernel then sends the child SIGTERM when the parent dies
(``PR_SET_PDEATHSIG``, set by the child itself, so no code runs between fork and exec in the parent).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)
PARENT_ENV = "SLMOPS_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Ask for SIGTERM when the parent named in the environment dies; exit now if it already has."""
    wanted = os.environ.pop(PARENT_ENV, "")
    if not wanted or not sys.platform.startswith("linux"):
        return
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
        log.warning("could not ask to stop with the parent process (errno %d)", ctypes.get_errno())
        return
    if str(os.getppid()) != wanted:  # the parent died before the request took effect
        raise SystemExit(f"parent process {wanted} is gone: not starting")
