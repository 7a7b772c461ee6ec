"""The served model, swappable atomically while requests are in flight.

Each request takes a :class:`Lease` on the current :class:`ModelHandle` when it is admitted and returns it
when it finishes. :meth:`ModelSlot.swap` points new leases at the new model at once; the old model keeps
serving the requests that already hold it and is closed when its last lease is returned. So an update fails
no request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.runtime.base import LoadedModel
from agent.serving.errors import NoModelLoaded

log = logging.getLogger(__name__)


class ModelHandle:
    """A loaded model, its version label and how many requests use it."""

    def __init__(self, model: LoadedModel, version: str = "") -> None:
        self.model, self.version = model, version
        self._refs = 0
        self._retired = False
        self._lock = threading.Lock()
        self.closed = threading.Event()

    @property
    def refs(self) -> int:
        with self._lock:
            return self._refs

    def _acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def _release(self) -> None:
        with self._lock:
            self._refs -= 1
            close_now = self._retired and self._refs == 0
        if close_now:
            self._close()

    def _retire(self) -> None:
        with self._lock:
            self._retired = True
            close_now = self._refs == 0
        if close_now:
            self._close()

    def _close(self) -> None:
        if self.closed.is_set():
            return
        try:
            self.model.close()
        except Exception:
            log.exception("closing model %s (version %s) failed", self.model.model_id, self.version)
        finally:
            self.closed.set()
            log.info("retired model %s version %s closed", self.model.model_id, self.version or "-")


@dataclass
class Lease:
    handle: ModelHandle
    _released: bool = False

    @property
    def model(self) -> LoadedModel:
        return self.handle.model

    @property
    def version(self) -> str:
        return self.handle.version

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.handle._release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class ModelSlot:
    def __init__(self, model: LoadedModel | None = None, version: str = "") -> None:
        self._lock = threading.Lock()
        self._handle = ModelHandle(model, version) if model is not None else None
        self._listeners: list[Callable[[ModelHandle], None]] = []

    @property
    def loaded(self) -> bool:
        return self._handle is not None

    @property
    def current(self) -> ModelHandle | None:
        return self._handle

    def on_swap(self, listener: Callable[[ModelHandle], None]) -> None:
        """Call ``listener(new_handle)`` after each swap (e.g. to relabel metrics)."""
        self._listeners.append(listener)

    def lease(self) -> Lease:
        """Take the current model for one request; raises :class:`NoModelLoaded` when there is none."""
        with self._lock:
            handle = self._handle
            if handle is None:
                raise NoModelLoaded()
            handle._acquire()
        return Lease(handle)

    def swap(self, model: LoadedModel, version: str = "", *, wait_s: float | None = 0.0) -> ModelHandle | None:
        """Serve ``model`` from now on; the previous model closes once its in-flight requests finish.

        Returns the previous handle (``handle.closed`` is set when it has closed). ``wait_s`` > 0 blocks up to
        that long for the close; None blocks until it happens.
        """
        new = ModelHandle(model, version)
        with self._lock:
            old, self._handle = self._handle, new
        log.info(
            "serving %s version %s (was %s)",
            model.model_id,
            version or "-",
            f"{old.model.model_id} {old.version}" if old else "nothing",
        )
        for listener in self._listeners:
            listener(new)
        if old is not None and old is not new:
            old._retire()
            if wait_s is None or wait_s > 0:
                old.closed.wait(wait_s)
        return old

    def clear(self, *, wait_s: float | None = 0.0) -> ModelHandle | None:
        """Stop serving (new requests get 503); the model closes after in-flight requests."""
        with self._lock:
            old, self._handle = self._handle, None
        if old is not None:
            old._retire()
            if wait_s is None or wait_s > 0:
                old.closed.wait(wait_s)
        return old
