"""Where factory work runs: one :class:`TaskRunner` interface, one implementation per engine.

``local`` (the default) runs each task in a process on the controller's machine; ``ray`` submits each as a Ray
task with the resources its stage declares. The pipeline runner hands stages to a runner, and the ``search``
stage hands it trials, so both run wherever the controller was told to run jobs (``--jobs``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from controller.factory.spec import Resources

if TYPE_CHECKING:
    from controller.factory.stage import Stage, StageConfig, StageContext, StageResult


class TaskRunner(ABC):
    """Runs picklable callables somewhere, with declared resources; results come back as futures."""

    name: str = "abstract"
    #: Where the runner sends work: "" runs in this process; else e.g. "ray://10.0.0.5:10001" (for messages).
    address: str = ""
    #: True when stage outputs stay in the blob store and the job worker holds only their index (packed.py).
    outputs_in_store: bool = False

    @abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources, **kwargs: Any) -> Future[Any]:
        """Start ``fn(*args, **kwargs)``; the future's result is its return value, or raises what it raised."""

    @abstractmethod
    def parallelism(self, resources: Resources) -> int:
        """How many tasks of this size can run at once right now (at least 1)."""

    def cancel(self, future: Future[Any]) -> None:
        """Stop a submitted task if it is still running (best effort)."""
        future.cancel()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the runner holds (worker pools, cluster connections)."""

    def run_stage(self, stage: Stage, config: StageConfig, ctx: StageContext, resources: Resources) -> StageResult:
        """Run one pipeline stage with ``resources`` and return its result; raises what the stage raised.

        The default submits ``stage.run(config, ctx)`` and waits: right for runners that run in this process
        (the context's callbacks are plain functions). Runners that send work elsewhere override it to ship a
        picklable description of the step and relay progress, logs and cancellation.
        """
        return self.submit(stage.run, config, ctx, resources=resources).result()

    def describe(self) -> str:
        """One line for logs and messages ("local", "ray at ray://10.0.0.5:10001")."""
        return f"{self.name} at {self.address}" if self.address else self.name
