"""Child processes started with SLMOPS_EXIT_WITH_PARENT stop when their parent dies (no orphaned demo agents)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from shared.lifecycle import PARENT_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

CHILD = "from shared.lifecycle import exit_with_parent; exit_with_parent(); import time; time.sleep(60)"
# A middle process starts the child with its own pid, prints the child's pid, and exits at once.
MIDDLE = f"""
import os, subprocess, sys
env = {{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], env=env)
print(child.pid, flush=True)
import time; time.sleep(1.5)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_child_stops_when_its_parent_dies() -> None:
    out = subprocess.run([sys.executable, "-c", MIDDLE], capture_output=True, text=True, timeout=30, check=True)
    child = int(out.stdout.split()[0])
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def test_child_refuses_to_start_when_the_parent_is_already_gone() -> None:
    env = {**os.environ, PARENT_ENV: "1"}  # not our parent: as if the real one had died before the child began
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "parent process 1 is gone" in run.stderr
