"""Helpers for the factory training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.factory.stage import Progress, StageContext


@pytest.fixture
def make_ctx(tmp_path: Path):
    """``make_ctx(inputs=..., name=...)`` -> a StageContext with its own work dir and a shared cache dir."""
    seen: list[Progress] = []

    def make(inputs: dict[str, Path] | None = None, name: str = "w", cancelled: bool = False) -> StageContext:
        work = tmp_path / name
        work.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            work_dir=work,
            inputs=dict(inputs or {}),
            cache_dir=tmp_path / "shared-cache",
            progress=seen.append,
            is_cancelled=lambda: cancelled,
        )
        ctx.extras["seen"] = seen
        return ctx

    return make


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine one thread is faster."""
    import torch

    torch.set_num_threads(1)
