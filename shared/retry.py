"""Every retry and backoff of the agent, in one place, on tenacity.

A :class:`Policy` names what it retries and sets its base delay, cap, jitter and (optionally) how many attempts;
its wait strategy is the one source of delays, both for loops run here and for delays a caller schedules itself
(:meth:`Policy.delay`). The retry for attempt ``n`` (1: after the first failure) waits

    min(cap, base * multiplier ** (n - 1)) * uniform(*jitter), capped again at ``cap``

Loops wait on a :class:`threading.Event` (the agent's stop event, an install's cancel event): setting it ends the
wait at once and the loop with :class:`Interrupted`, without another attempt. Each retry is logged at WARNING once
(what, the error, the delay); :meth:`Policy.call` can log a line at INFO when a retried call succeeds again.

Imports only tenacity and the standard library: the agent-only install uses it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_never
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT, wait_base, wait_exponential

log = logging.getLogger(__name__)
T = TypeVar("T")


class Interrupted(Exception):
    """The stop event was set while a retry waited: no further attempt is made."""


class JitteredExponential(wait_base):
    """tenacity wait: the capped exponential delay times a uniform factor in ``jitter``, capped again."""

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        multiplier: float = 2.0,
        jitter: tuple[float, float] = (1.0, 1.0),
        rng: random.Random | None = None,
    ) -> None:
        self.exponential = wait_exponential(multiplier=base_s, max=cap_s, exp_base=multiplier)
        self.cap_s = cap_s
        self.jitter = jitter
        self.uniform: Callable[[float, float], float] = rng.uniform if rng is not None else random.uniform

    def __call__(self, retry_state: RetryCallState) -> float:
        lo, hi = self.jitter
        return min(self.cap_s, self.exponential(retry_state) * self.uniform(lo, hi))


@dataclass(frozen=True)
class Policy:
    """A named backoff: ``base_s`` doubles (``multiplier``) per failed attempt up to ``cap_s``, times a factor drawn
    from ``jitter``. ``max_attempts`` 0 retries until the stop event is set. ``rng`` seeds the jitter (tests)."""

    name: str
    base_s: float
    cap_s: float
    jitter: tuple[float, float] = (0.5, 1.0)
    multiplier: float = 2.0
    max_attempts: int = 0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def but(self, **changes: Any) -> Policy:
        """This policy with some fields changed (a setting's cap, a test's fast delays)."""
        return dataclasses.replace(self, **changes)

    def wait(self) -> wait_base:
        """The tenacity wait strategy: every delay of this policy comes from it."""
        return JitteredExponential(self.base_s, self.cap_s, self.multiplier, self.jitter, self.rng)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1: after the first failure), for callers that schedule it."""
        state = RetryCallState(_SCHEDULE, None, (), {})
        state.attempt_number = max(1, attempt)
        return self.wait()(state)

    def stop(self) -> StopBaseT:
        return stop_after_attempt(self.max_attempts) if self.max_attempts > 0 else stop_never

    def retrying(
        self,
        what: str,
        event: threading.Event | None,
        *,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        logger: logging.Logger | None = None,
        stop: StopBaseT | None = None,
        wait: WaitBaseT | None = None,
        **hooks: Any,
    ) -> Retrying:
        """A tenacity ``Retrying`` for ``what``: this policy's wait and stop (unless given), retrying ``retry_on``
        errors (others are raised at once), sleeping on ``event`` (:class:`Interrupted` when it is set), logging
        each retry. When the attempts run out, the last error is raised. ``hooks``: tenacity's ``before``,
        ``after``."""
        return Retrying(
            sleep=interruptible(event),
            stop=stop if stop is not None else self.stop(),
            wait=wait if wait is not None else self.wait(),
            retry=retry_if_exception_type(retry_on),
            before_sleep=log_retry(what, logger),
            reraise=True,
            name=f"{self.name}: {what}",
            **hooks,
        )

    def call(
        self,
        fn: Callable[[], T],
        what: str,
        event: threading.Event | None,
        *,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        logger: logging.Logger | None = None,
        recovered: str = "",
    ) -> T:
        """``fn()``, retried as :meth:`retrying` says; raises :class:`Interrupted` when ``event`` is set during a
        wait. After a success that needed retries, ``recovered`` (if any) is logged at INFO."""
        retrying = self.retrying(what, event, retry_on=retry_on, logger=logger)
        result = retrying(fn)
        if recovered and retrying.statistics.get("attempt_number", 1) > 1:
            (logger or log).info("%s: %s", what, recovered)
        return result


class Streak:
    """Consecutive failures of something retried on a schedule rather than in a loop (the caller waits):
    ``next_delay()`` counts one more failure and returns the policy's delay for it; ``reset()`` after a success."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0


_SCHEDULE = Retrying()  # the retry object a RetryCallState needs when a delay is computed outside a loop


def interruptible(event: threading.Event | None) -> Callable[[float], None]:
    """A tenacity ``sleep`` that waits on ``event`` and raises :class:`Interrupted` as soon as it is set."""
    waiter = event if event is not None else threading.Event()

    def sleep(seconds: float) -> None:
        if waiter.wait(float(seconds)):
            raise Interrupted("stopped while waiting to retry")

    return sleep


def log_retry(what: str, logger: logging.Logger | None = None) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` hook: one WARNING per retry naming ``what``, the error and the delay."""
    target = logger or log

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        target.warning("%s: %s; retry %d in %.2f s", what, describe(error), state.attempt_number, state.upcoming_sleep)

    return before_sleep


def describe(exc: BaseException | None) -> str:
    """One line for an error: a project error's message, a gRPC error's code and details, else type and text."""
    if exc is None:
        return "no error"
    text = getattr(exc, "message", None)
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if not isinstance(text, str) and callable(code) and callable(details):
        try:
            status = code()
            text = f"{getattr(status, 'name', status)}: {details()}"
        except Exception:  # not a real gRPC error
            text = None
    if not isinstance(text, str) or not text.strip():
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.strip().splitlines()[0]


# The agent's policies (name, base, cap, jitter). Callers change a field with ``but()`` where a setting or a test
# says so (the heartbeat's cap is AgentSettings.backoff_max_s; telemetry's base is twice its flush interval).
CONTROLLER_CALL = Policy("controller_call", base_s=1.0, cap_s=60.0, jitter=(0.5, 1.0))
REFUSED = Policy("refused", base_s=5.0, cap_s=60.0, jitter=(0.5, 1.0))
TRANSFER = Policy("transfer", base_s=0.2, cap_s=10.0, jitter=(0.75, 1.25), max_attempts=8)
INSTALL_STEP = Policy("install_step", base_s=1.0, cap_s=60.0, jitter=(0.75, 1.0))
REPORT = Policy("report", base_s=0.5, cap_s=30.0, jitter=(0.75, 1.0))
TELEMETRY = Policy("telemetry", base_s=10.0, cap_s=60.0, jitter=(0.5, 1.0))
POLICIES = {p.name: p for p in (CONTROLLER_CALL, REFUSED, TRANSFER, INSTALL_STEP, REPORT, TELEMETRY)}
