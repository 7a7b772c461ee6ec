"""The manifest signing key: created once, and a process that loses the race to create it loads the winner's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared import manifest
from shared.manifest import load_or_create_signing_key, public_pem


def test_the_key_is_created_once_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k.pem"
    first = load_or_create_signing_key(path)
    assert public_pem(load_or_create_signing_key(path)) == public_pem(first)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_losing_the_race_to_create_it_loads_the_winners_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.pem"
    winner = load_or_create_signing_key(tmp_path / "other.pem")
    real_open = os.open

    def created_meanwhile(p: str, flags: int, mode: int = 0o777) -> int:
        if Path(p) == path and flags & os.O_EXCL:  # another replica created it after our exists() check
            (tmp_path / "other.pem").rename(path)
        return real_open(p, flags, mode)

    monkeypatch.setattr(manifest.os, "open", created_meanwhile)
    assert public_pem(load_or_create_signing_key(path)) == public_pem(winner)
