"""Run a tool (model builder, Olive, an evaluation worker) in a child process: output to a log file,
cancellable, with a time limit, and a readable tail of its output when it fails."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Cancelled

log = logging.getLogger(__name__)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class ToolRun:
    returncode: int
    seconds: float
    log_path: Path

    def tail(self, lines: int = 25, chars: int = 4000) -> str:
        """The last lines of the tool's output (progress-bar carriage returns folded)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output captured)"
        rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines() if row.strip()]
        return "\n".join(rows[-lines:])[-chars:]


def run_tool(
    cmd: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 0,
    is_cancelled: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
    on_poll: Callable[[], None] | None = None,
) -> ToolRun:
    """Run ``cmd`` to completion; stdout+stderr go to ``log_path``.

    Raises :class:`Cancelled` (after killing the child's process group) when ``is_cancelled()`` turns true,
    and :class:`TimeoutError` when ``timeout_s`` (> 0) passes. ``on_poll`` runs every ``poll_s`` while the
    child runs (e.g. to relay its progress).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    start = time.monotonic()
    log.debug("running %s", " ".join(str(c) for c in cmd))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd) if cwd else None,
            env=full_env,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if on_poll is not None:
                    on_poll()
                if is_cancelled():
                    _kill(proc)
                    raise Cancelled(f"job cancelled while running {Path(str(cmd[0])).name}")
                if timeout_s and time.monotonic() - start > timeout_s:
                    _kill(proc)
                    raise TimeoutError(f"{' '.join(str(c) for c in cmd[:4])} … ran over {timeout_s:.0f} s")
        except BaseException:
            _kill(proc)
            raise
    return ToolRun(rc, time.monotonic() - start, log_path)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
