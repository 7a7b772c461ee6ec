"""Small helpers the conversion, evaluation and publish stages share."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from controller.factory.stage import StageContext


def resolve_input(ctx: StageContext, ref: str) -> Path:
    """``ref`` is an absolute path, or the name of an earlier stage's output (``model``, ``convert.model``)."""
    if os.path.isabs(ref):
        return Path(ref)
    return ctx.input(ref)


def copy_tree_linked(src: Path, dest: Path) -> Path:
    """Copy a folder, hardlinking files where possible (outputs are never modified in place)."""

    def _link_or_copy(s: str, d: str) -> str:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
        return d

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, copy_function=_link_or_copy)
    return dest
