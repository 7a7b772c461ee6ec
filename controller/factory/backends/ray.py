"""The ``ray`` task runner: each stage (and each submitted callable) is a Ray task with the resources it declares.

The job worker is the Ray driver (it connects at job start). A stage's task gets ``num_cpus``, ``num_gpus`` and
``memory`` from :meth:`Resources.ray_options` (a CPU or memory request larger than the cluster's largest node
is lowered to that node, with a warning; a GPU request on a cluster without GPUs fails the step, naming
the cluster) and ``max_retries=1``: a worker that dies mid-stage (killed, out of memory, node lost) is retried
once, from a clean work dir, and a second death fails the step with Ray's error. A cancelled job first asks
the task to stop (its stage sees ``is_cancelled``), then force-cancels it (``ray.cancel(force=True)`` kills
the worker process). Progress and log records come back through a small inbox actor (see ``remote.py``):
Ray's own transport, so it works wherever the tasks run, and the workers never need the controller's
database. Ray is imported only when this runner is created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.factory.backends import packed
from controller.factory.backends.base import TaskRunner
from controller.factory.backends.remote import Inbox, StageTask, call, execute
from controller.factory.backends.transfer import Packed, pack
from controller.factory.cache import config_paths
from controller.factory.spec import Resources
from controller.registry.blobstore import from_config, recorded_config
from shared.errors import Cancelled, StageError, UnsupportedOnThisMachine

if TYPE_CHECKING:
    from controller.factory.stage import Stage, StageConfig, StageContext, StageResult

log = logging.getLogger(__name__)

POLL_S = 0.2
CANCEL_GRACE_S = 5.0
# Extras that stay in the job worker: they hold the controller's database and files.
LOCAL_ONLY_EXTRAS = {"registry", "fingerprints"}


class RayFuture(Future[Any]):
    """A future of one Ray task. ``result()`` waits with ``ray.wait``: called inside a Ray task (a stage that
    submits trials), Ray lends the waiting task's CPUs to the trials instead of deadlocking a small cluster."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self.ref = ref
        self.set_running_or_notify_cancel()
        ref.future().add_done_callback(self._settle)

    def _settle(self, done: Future[Any]) -> None:
        exc = done.exception()
        with contextlib.suppress(InvalidStateError):  # already settled by cancel()
            if exc is None:
                self.set_result(done.result())
            else:
                self.set_exception(exc)

    def cancel(self) -> bool:  # a running task is cancelled through the runner; mark the future settled
        from ray.exceptions import TaskCancelledError

        with contextlib.suppress(InvalidStateError):
            self.set_exception(TaskCancelledError())
        return True

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            import ray

            ray.wait([self.ref], timeout=timeout)
        return super().result(timeout=None if timeout is None else min(timeout, 1.0))


class RayTaskRunner(TaskRunner):
    name = "ray"

    def __init__(self, address: str, *, transfer: bool = True) -> None:
        import ray

        self.address = address
        self.transfer = transfer
        self.outputs_in_store = transfer
        # Inside a Ray task (a stage submitting trials) this process is connected already.
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        self._ray = ray
        self._execute = ray.remote(execute)
        self._call = ray.remote(call)
        self._inbox: Any = None
        self._started: dict[str, dict[str, Any]] = {}  # the last attempt of each step: pid, node, attempt
        self._packs: dict[str, Packed] = {}
        self._lock = threading.Lock()
        self._nodes: tuple[float, dict[str, float]] = (0.0, {})

    def __reduce__(self) -> tuple[Any, ...]:  # travels into tasks by address; reconnects only if it must
        return (_rebuild, (self.address, self.transfer))

    # --- generic tasks -------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources, **kwargs: Any) -> Future[Any]:
        ref = self._call.options(**self.options(resources)).remote(fn, args, kwargs)
        return RayFuture(ref)

    def cancel(self, future: Future[Any]) -> None:
        if isinstance(future, RayFuture) and not future.done():
            self._ray.cancel(future.ref, force=True)
        future.cancel()

    def parallelism(self, resources: Resources) -> int:
        total = self._ray.cluster_resources()
        fits = [int(total.get("CPU", 1) // max(resources.num_cpus, 1e-3))]
        if resources.num_gpus:
            fits.append(int(total.get("GPU", 0) // resources.num_gpus))
        return max(1, min(fits))

    def close(self) -> None:
        if not self._ray.is_initialized():
            return
        if self._inbox is not None:
            self._ray.kill(self._inbox)
            self._inbox = None
        if self._owns_connection:
            self._ray.shutdown()

    def options(self, resources: Resources) -> dict[str, Any]:
        """``Resources.ray_options()`` fitted to the cluster, plus the retry policy."""
        opts = resources.ray_options()
        largest = self._largest_node()
        if opts["num_gpus"] and opts["num_gpus"] > largest.get("GPU", 0):
            raise UnsupportedOnThisMachine(
                f"the step needs {opts['num_gpus']:g} GPU(s) but no node of the Ray cluster at {self.address} has "
                "that many: add a GPU worker (`ray start --address HEAD:6379 --num-gpus N`) or pick a CPU method"
            )
        for key, node_key in (("num_cpus", "CPU"), ("memory", "memory")):
            if node_key in largest and opts[key] > largest[node_key]:
                log.warning("lowering %s from %s to %s: no Ray node has more", key, opts[key], largest[node_key])
                opts[key] = largest[node_key]
        return {**opts, "max_retries": 1, "retry_exceptions": False}

    def _largest_node(self) -> dict[str, float]:
        stamp, largest = self._nodes
        if time.monotonic() - stamp > 30 or not largest:
            largest = {}
            for node in self._ray.nodes():
                if node.get("Alive"):
                    for key, value in node.get("Resources", {}).items():
                        largest[key] = max(largest.get(key, 0.0), float(value))
            self._nodes = (time.monotonic(), largest)
        return largest

    # --- pipeline stages -----------------------------------------------------------------------------------
    def run_stage(self, stage: Stage, config: StageConfig, ctx: StageContext, resources: Resources) -> StageResult:
        step = ctx.extras["step"]
        task = self._task(stage, config, ctx)
        inbox = self._get_inbox()
        self._ray.get(inbox.cancel.remote(False))
        ref = self._execute.options(**self.options(resources)).remote(task, inbox)
        done = False
        try:
            while not done:
                done = bool(self._ray.wait([ref], timeout=POLL_S)[0])
                self._relay(inbox, ctx)
                if not done and ctx.is_cancelled():
                    self._stop(ref, inbox, step.id)
                    raise Cancelled(f"job cancelled during step '{step.id}' (its Ray task was cancelled)")
            out = self._result(ref, step.id)
            self._relay(inbox, ctx)
        finally:
            if not done:
                self._ray.cancel(ref, force=True)
        return self._finish(out, ctx, step.id)

    def _get_inbox(self) -> Any:
        if self._inbox is None:
            self._inbox = self._ray.remote(Inbox).options(num_cpus=0).remote()
        return self._inbox

    def _task(self, stage: Stage, config: StageConfig, ctx: StageContext) -> StageTask:
        import pickle

        extras: dict[str, Any] = {}
        for key, value in ctx.extras.items():
            if key in LOCAL_ONLY_EXTRAS:
                continue
            try:
                pickle.dumps(value)
            except Exception:
                if key != "task_runner":
                    log.debug("extra '%s' stays in the job worker (not picklable)", key)
                    continue
            extras[key] = value
        data_dir = Path(ctx.extras.get("data_dir") or ctx.work_dir.parent)
        config_blobs = recorded_config(data_dir) if self.transfer else None
        config_json = config.model_dump(mode="json")
        packs: dict[str, Packed] = {}
        if config_blobs is not None:  # inputs and files named in the config, for nodes without this disk
            blobs = from_config(config_blobs, data_dir)
            fp = ctx.extras.get("fingerprints")
            for path in {*map(str, ctx.inputs.values()), *config_paths(config_json)}:
                if (found := packed.covering(Path(path))) is not None:  # an earlier step's outputs, in the store
                    packs[str(found[0])] = Packed(str(found[0]), found[1], remote=True)
                    continue
                if path not in self._packs and Path(path).exists():
                    self._packs[path] = pack(blobs, Path(path), fp)
                if path in self._packs:
                    packs[path] = self._packs[path]
        return StageTask(
            job_id=str(ctx.extras.get("job_id", "")),
            step_id=ctx.extras["step"].id,
            stage=stage.name,
            config=config_json,
            work_dir=str(ctx.work_dir),
            inputs={k: str(v) for k, v in ctx.inputs.items()},
            upstream=ctx.upstream_metrics,
            cache_dir=str(ctx.cache_dir),
            data_dir=str(data_dir),
            extras=extras,
            packs=packs,
            blob_config=config_blobs,
        )

    def _relay(self, inbox: Any, ctx: StageContext) -> None:
        from controller.factory.stage import Progress

        for item in self._ray.get(inbox.drain.remote()):
            kind = item.get("kind")
            if kind == "progress":
                ctx.progress(Progress(item["step"], item["step_n"], item["total"], item["loss"], item["message"]))
            elif kind == "log":
                logging.getLogger(f"ray-task.{item['name']}").log(item["level"], "%s", item["msg"])
            elif kind == "started":
                self._record_start(item, ctx)

    def _record_start(self, item: dict[str, Any], ctx: StageContext) -> None:
        """Note which worker process runs the step: ``<job dir>/ray-tasks.jsonl`` and the job log."""
        from controller.factory.stage import Progress

        path = ctx.work_dir.parent / "ray-tasks.jsonl"
        attempt = self._started.get(item["step"], {}).get("attempt", 0) + 1
        record = {k: item[k] for k in ("step", "pid", "node", "time")} | {"attempt": attempt}
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._started[item["step"]] = record
        log.info("step %s: Ray worker pid %s on %s (attempt %d)", item["step"], item["pid"], item["node"], attempt)
        ctx.progress(Progress(item["step"], 0, 0, message=f"on Ray worker pid {item['pid']} ({item['node']})"))

    def _stop(self, ref: Any, inbox: Any, step_id: str) -> None:
        """Ask the task to stop; force-cancel it (killing its worker) when it has not within the grace time."""
        self._ray.get(inbox.cancel.remote(True))
        if not self._ray.wait([ref], timeout=CANCEL_GRACE_S)[0]:
            log.warning("step %s: the Ray task did not stop within %.0f s; killing it", step_id, CANCEL_GRACE_S)
        self._ray.cancel(ref, force=True)

    def _result(self, ref: Any, step_id: str) -> dict[str, Any]:
        from ray import exceptions as rex

        try:
            out: dict[str, Any] = self._ray.get(ref)
        except rex.TaskCancelledError as exc:
            raise Cancelled(f"the Ray task of step '{step_id}' was cancelled") from exc
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.RayActorError) as exc:
            last = self._started.get(step_id, {})
            who = f" (pid {last['pid']} on {last['node']}, attempt {last['attempt']})" if last else ""
            raise StageError(
                step_id, f"its Ray worker{who} died and the retry did not succeed: {type(exc).__name__}: {exc}"
            ) from exc
        except rex.RayTaskError as exc:
            raise StageError(step_id, f"its Ray task raised {exc.cause!r}" if exc.cause else str(exc)) from exc
        except rex.RayError as exc:
            raise StageError(step_id, f"Ray could not run it at {self.address}: {type(exc).__name__}: {exc}") from exc
        if out["status"] == "cancelled":
            raise Cancelled(out["message"])
        if out["status"] == "crash":
            log.error("step %s crashed on its Ray worker:\n%s", step_id, out.get("traceback", ""))
        if out["status"] != "ok":
            raise StageError(step_id, out["message"])
        return out

    def _finish(self, out: dict[str, Any], ctx: StageContext, step_id: str) -> StageResult:
        """The step's result on the controller: its work dir holds only the index of the blobs the task stored
        (``packed.py``); outputs name paths under it. Nothing is copied back."""
        from controller.factory.stage import StageResult

        remote_dir = Path(out["work_dir"])
        stored: Packed | None = out.get("packed")
        if stored is not None and remote_dir != ctx.work_dir:
            packed.write_index(ctx.work_dir, stored.files)
        elif remote_dir != ctx.work_dir or not ctx.work_dir.exists():
            raise StageError(step_id, "its outputs stayed on the Ray worker: no blob store to bring them back")
        outputs = {n: ctx.work_dir / p[4:] if p.startswith("rel:") else Path(p) for n, p in out["outputs"].items()}
        return StageResult(outputs=outputs, metrics=out["metrics"])


def _rebuild(address: str, transfer: bool) -> RayTaskRunner:
    return RayTaskRunner(address, transfer=transfer)
