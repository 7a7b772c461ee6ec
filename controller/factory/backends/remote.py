"""What runs inside a Ray task for one pipeline step (imported on the worker; no Ray import at module level).

The job worker sends a :class:`StageTask` (plain data: the stage's name and config, its inputs' paths and
packs, the picklable extras) and an *inbox* actor. The task rebuilds the stage and its context, runs it in a
scratch folder of its own (inputs materialised from the blob store), packs its work dir into the store, removes
the scratch and returns a plain dict (``status`` ok | error | cancelled | crash): no
exception has to survive pickling across Python processes. While it runs, it puts into the inbox a ``started``
record (its pid and node, so a test or an operator can find the process), throttled progress updates and its
log records; the job worker drains them into the Job row and ``job.log``. ``is_cancelled`` asks the inbox,
which the job worker flags when the job is cancelled, so a stage stops cleanly (and stops its child tools);
the job worker force-cancels the task if it does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.factory.backends.transfer import Packed, localize, pack, unlocalize
from controller.registry.blobstore import from_config
from shared.errors import Cancelled, SlmopsError

PROGRESS_EVERY_S = 0.25
CANCEL_POLL_S = 0.5
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OLIVE_DISABLE_TELEMETRY": "1",
}


@dataclass
class StageTask:
    job_id: str
    step_id: str
    stage: str
    config: dict[str, Any]
    work_dir: str
    inputs: dict[str, str]
    upstream: dict[str, dict[str, Any]]
    cache_dir: str
    data_dir: str
    extras: dict[str, Any] = field(default_factory=dict)
    packs: dict[str, Packed] = field(default_factory=dict)
    # None: do not use the blob store (tests of the bare path); else the recorded settings ({} = file store).
    blob_config: dict[str, Any] | None = None


class Inbox:
    """Ray actor (created with ``num_cpus=0``): messages from a job's tasks, and its cancel flag."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._cancelled = False

    def put(self, item: dict[str, Any]) -> None:
        self._items.append(item)

    def drain(self) -> list[dict[str, Any]]:
        items, self._items = self._items, []
        return items

    def cancel(self, flag: bool = True) -> None:
        self._cancelled = flag

    def cancelled(self) -> bool:
        return self._cancelled


class _InboxLogHandler(logging.Handler):
    def __init__(self, send: Any) -> None:
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ray"):
            return
        with contextlib.suppress(Exception):  # a log line must never fail the stage
            self.send({"kind": "log", "level": record.levelno, "name": record.name, "msg": record.getMessage()})


class _Relay:
    """The task's side of the inbox: throttled progress, log records, the cancel flag."""

    def __init__(self, inbox: Any, step_id: str) -> None:
        self.inbox, self.step_id = inbox, step_id
        self._last_sent = 0.0
        self._last_message = ""
        self._cancel_checked = 0.0
        self._cancelled = False

    def send(self, item: dict[str, Any]) -> None:
        if self.inbox is not None:
            self.inbox.put.remote({**item, "step": self.step_id})

    def progress(self, p: Any) -> None:
        now = time.monotonic()
        final = bool(p.total_steps) and p.step >= p.total_steps
        if p.message == self._last_message and not final and now - self._last_sent < PROGRESS_EVERY_S:
            return
        self._last_sent, self._last_message = now, p.message
        self.send({"kind": "progress", "step_n": p.step, "total": p.total_steps, "loss": p.loss, "message": p.message})

    def is_cancelled(self) -> bool:
        now = time.monotonic()
        if self.inbox is not None and not self._cancelled and now - self._cancel_checked >= CANCEL_POLL_S:
            import ray

            self._cancel_checked = now
            self._cancelled = bool(ray.get(self.inbox.cancelled.remote()))
        return self._cancelled


def _task_dir(task: StageTask) -> Path | None:
    """The task's own scratch folder (its work dir and materialised inputs, removed when it ends); None when
    the task works in the step's work dir in place (no blob store: every node shares the controller's disk)."""
    if task.blob_config is None:
        return None
    base = Path(tempfile.gettempdir()) / "slmops-ray" / (task.job_id or "job")
    base.mkdir(parents=True, exist_ok=True)
    name = Path(task.work_dir).name
    for stale in base.glob(f"{name}-*"):  # left by an attempt whose worker died (Ray retries the step)
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))


def _work_dir(task: StageTask, task_dir: Path | None) -> Path:
    path = Path(task.work_dir) if task_dir is None else task_dir / Path(task.work_dir).name
    if path.exists():
        shutil.rmtree(path)  # a retried attempt starts clean
    path.mkdir(parents=True)
    return path


def _rel_outputs(outputs: dict[str, Path], work_dir: Path, seen: dict[str, str]) -> dict[str, str]:
    """Outputs as "rel:<path in the work dir>", or the controller-side path of an input passed on."""
    rel, root = {}, work_dir.resolve()
    for name, path in outputs.items():
        p = Path(path).resolve()
        rel[name] = f"rel:{p.relative_to(root).as_posix()}" if p.is_relative_to(root) else unlocalize(str(p), seen)
    return rel


def _assigned_cpus() -> int:
    """The CPUs Ray assigned this task (0 outside a Ray task)."""
    try:
        import ray

        if ray.is_initialized():
            return int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # not in a Ray task, or a Ray without the call: the stage chooses by itself
        return 0
    return 0


def _localize_config(value: Any, fix: Any) -> Any:
    """The config with every string that names a packed path replaced by where it is on this node."""
    if isinstance(value, str):
        return fix(value) if os.path.isabs(value) else value
    if isinstance(value, dict):
        return {k: _localize_config(v, fix) for k, v in value.items()}
    if isinstance(value, list):
        return [_localize_config(v, fix) for v in value]
    return value


def execute(task: StageTask, inbox: Any) -> dict[str, Any]:
    """Run one step (the body of the Ray task); returns a plain dict, never raises for a stage failure."""
    from controller.factory.stage import Progress, StageContext, get_stage

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    relay = _Relay(inbox, task.step_id)
    relay.send({"kind": "started", "pid": os.getpid(), "node": socket.gethostname(), "time": time.time()})
    handler = _InboxLogHandler(relay.send)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    task_dir = _task_dir(task)
    try:
        blobs = None if task.blob_config is None else from_config(task.blob_config, Path(task.data_dir))
        work_dir = _work_dir(task, task_dir)
        scratch = (task_dir or Path(tempfile.gettempdir()) / "slmops-ray" / task.job_id) / "inputs"
        seen: dict[str, str] = {}

        def here(path: str) -> str:
            return localize(path, task.packs, blobs, scratch, seen)

        inputs = {k: Path(here(v)) for k, v in task.inputs.items()}
        stage = get_stage(task.stage)
        config = stage.parse_config(_localize_config(task.config, here), f"step '{task.step_id}'")
        ctx = StageContext(
            work_dir=work_dir,
            inputs=inputs,
            upstream_metrics=task.upstream,
            cache_dir=Path(task.cache_dir),
            progress=relay.progress,
            is_cancelled=relay.is_cancelled,
            # blob_config: the search sends its trials' inputs through the store; assigned_cpus: Ray's grant
            extras={**task.extras, "blob_config": task.blob_config, "assigned_cpus": _assigned_cpus()},
        )
        try:
            result = stage.run(config, ctx)
        except Cancelled as exc:
            return {"status": "cancelled", "message": exc.message}
        except SlmopsError as exc:
            return {"status": "error", "message": exc.message, "type": type(exc).__name__}
        except Exception as exc:
            return {"status": "crash", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        relay.progress(Progress(task.step_id, 1, 1, message="storing outputs"))
        packed = pack(blobs, work_dir) if blobs is not None else None
        return {
            "status": "ok",
            "outputs": _rel_outputs(result.outputs, work_dir, seen),
            "metrics": result.metrics,
            "work_dir": str(work_dir),
            "packed": packed,
            "pid": os.getpid(),
        }
    finally:
        root.removeHandler(handler)
        if task_dir is not None:
            shutil.rmtree(task_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the job's folder on this node, once its last step is done
                task_dir.parent.rmdir()


def call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The body of a generic task (:meth:`RayTaskRunner.submit`)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    return fn(*args, **kwargs)
