"""Model versions: numbering ("1", "2", ... per model name), ordering, references, and the domain view of
a version with its variants."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.store.tables import ModelVersionRow, VariantRow
from shared.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_model_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"model name '{name}' is not valid: use 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: numeric versions by value (also "v3"), anything else after them, by text."""
    digits = version[1:] if version[:1] in ("v", "V") else version
    if digits.isdigit():
        return (0, int(digits), version)
    return (1, 0, version)


def next_version(existing: Iterable[str]) -> str:
    """One more than the highest numeric version ("1" for the first)."""
    numbers = [version_key(v)[1] for v in existing if version_key(v)[0] == 0]
    return str(max(numbers, default=0) + 1)


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` -> (name, version); ``NAME`` alone -> (name, "") meaning the latest."""
    name, _, version = ref.partition(":")
    return check_model_name(name.strip()), version.strip()


@dataclass
class ModelVersionInfo:
    """One published model version and its variants (one per device profile)."""

    name: str
    version: str
    created_at: float
    lineage: dict[str, Any]
    job_id: str
    variants: list[VariantRow] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def profiles(self) -> list[str]:
        return sorted(v.profile for v in self.variants)

    @classmethod
    def from_rows(cls, row: ModelVersionRow, variants: list[VariantRow]) -> ModelVersionInfo:
        return cls(
            name=row.name,
            version=row.version,
            created_at=row.created_at,
            lineage=json.loads(row.lineage_json or "{}"),
            job_id=row.job_id,
            variants=sorted(variants, key=lambda v: v.profile),
        )
