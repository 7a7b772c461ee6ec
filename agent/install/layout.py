"""The agent's data directory::

    <data_dir>/
      install/state.json               the install state machine's snapshot
      current.json, previous.json      pointers {"name", "version"} (written atomically)
      models/<name>/<version>/         a model folder exactly as its manifest lists it, plus
      models/<name>/<version>+<profile>/  the same version's variant for another profile (the device's profile
                                       changed while it ran <version>); "+..." is local build metadata, as in
                                       semver: reports to the controller name <version>
      models/<name>/<version>/.slmops/ manifest.json + manifest.sig of that version
      models/<name>/.staging-<version>/ a version being assembled (renamed into place when complete)
      downloads/<sha>.part, <sha>      partial and complete downloads (content addressed)

Pointers are JSON files rather than symlinks so the same code runs on Windows edge machines. Versions share
identical files as hardlinks (same sha256), so installed files are never written in place: a repair replaces
them. ``integrity.py`` checks installed versions against their sidecar manifests (docs/install.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.install.statefile import write_atomic
from agent.install.states import ModelRef
from shared.durable import fsync_dir
from shared.errors import IntegrityError, InvalidArgument
from shared.manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

SIDECAR = ".slmops"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_ref(ref: ModelRef) -> ModelRef:
    for what, value in (("name", ref.name), ("version", ref.version)):
        if not _NAME_RE.match(value) or ".." in value:
            raise InvalidArgument(
                f"model {what} '{value[:80]}' cannot be a folder name: use letters, digits and . _ + -"
            )
    return ref


VARIANT_SEP = "+"


def public_ref(ref: ModelRef) -> ModelRef:
    """The version the controller knows: ``1+cpu-int4`` (a local variant folder) is version ``1``."""
    return ModelRef(ref.name, ref.version.split(VARIANT_SEP, 1)[0])


def variant_ref(ref: ModelRef, profile: str) -> ModelRef:
    """The local name of ``ref``'s variant for ``profile``, installed beside another variant of that version."""
    return check_ref(ModelRef(ref.name, f"{public_ref(ref).version}{VARIANT_SEP}{profile}"))


def same_variant(a: Manifest, b: Manifest) -> bool:
    return (a.name, a.version, a.profile, a.precision, a.files) == (b.name, b.version, b.profile, b.precision, b.files)


def check_file_path(path: str) -> PurePosixPath:
    """A manifest path must stay inside the model folder and not touch the sidecar."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or p.parts[0] == SIDECAR:
        raise IntegrityError(f"manifest file path '{path[:120]}' is not a safe relative path: refusing the manifest")
    return p


@dataclass(frozen=True)
class Installed:
    ref: ModelRef
    path: Path
    manifest: Manifest
    installed_unix: float


class Layout:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.models = self.root / "models"
        self.downloads = self.root / "downloads"
        self.state_path = self.root / "install" / "state.json"
        for d in (self.models, self.downloads, self.state_path.parent):
            d.mkdir(parents=True, exist_ok=True)

    # --- folders -----------------------------------------------------------------------------------------
    def version_dir(self, ref: ModelRef) -> Path:
        check_ref(ref)
        return self.models / ref.name / ref.version

    def staging_dir(self, ref: ModelRef) -> Path:
        check_ref(ref)
        return self.models / ref.name / f".staging-{ref.version}"

    def blob(self, sha: str) -> Path:
        return self.downloads / sha

    def is_complete(self, ref: ModelRef) -> bool:
        """True when the version folder exists with every manifest file at its size (it was verified before
        it was renamed into place; ``integrity.py`` hashes it again at start and in the periodic scrub, and
        deletes files that fail, so a damaged version is not complete)."""
        folder = self.version_dir(ref)
        installed = self.read_installed(folder)
        if installed is None:
            return False
        return all(
            (folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size for f in installed.manifest.files
        )

    # --- pointers ----------------------------------------------------------------------------------------
    def _pointer(self, which: str) -> Path:
        if which not in ("current", "previous"):
            raise InvalidArgument(f"unknown pointer '{which}'")
        return self.root / f"{which}.json"

    def read_pointer(self, which: str) -> ModelRef | None:
        try:
            raw = json.loads(self._pointer(which).read_bytes())
            return ModelRef(raw["name"], raw["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("pointer %s is unreadable: %s", self._pointer(which), exc)
            return None

    def write_pointer(self, which: str, ref: ModelRef | None) -> None:
        path = self._pointer(which)
        if ref is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        check_ref(ref)
        write_atomic(path, json.dumps({"name": ref.name, "version": ref.version}).encode())

    def current_dir(self) -> Path | None:
        ref = self.read_pointer("current")
        return self.version_dir(ref) if ref else None

    # --- installed versions ------------------------------------------------------------------------------
    def write_sidecar(self, folder: Path, manifest_json: bytes, signature: bytes) -> None:
        side = folder / SIDECAR
        side.mkdir(parents=True, exist_ok=True)
        (side / "manifest.sig").write_bytes(signature)
        write_atomic(side / "manifest.json", manifest_json)

    def read_sidecar(self, folder: Path) -> tuple[bytes, bytes]:
        """The installed manifest's bytes and signature (raises OSError when either is missing)."""
        side = folder / SIDECAR
        return (side / "manifest.json").read_bytes(), (side / "manifest.sig").read_bytes()

    def read_installed(self, folder: Path) -> Installed | None:
        side = folder / SIDECAR / "manifest.json"
        try:
            manifest = Manifest.from_json(side.read_bytes())
            mtime = side.stat().st_mtime
        except (OSError, InvalidArgument):
            return None
        # the folder's name is the local ref (``<version>`` or ``<version>+<profile>``)
        return Installed(ModelRef(folder.parent.name, folder.name), folder, manifest, mtime)

    def installed(self) -> list[Installed]:
        found = []
        for name_dir in sorted(p for p in self.models.iterdir() if p.is_dir()):
            for folder in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                inst = self.read_installed(folder)
                if inst is not None:
                    found.append(inst)
        return found

    def local_files(self) -> dict[tuple[str, int], Path]:
        """Files already on this agent by (sha256, size): complete downloads and files of installed versions.
        Not re-hashed here (VERIFY hashes whatever is used)."""
        found: dict[tuple[str, int], Path] = {}
        for inst in self.installed():
            for f in inst.manifest.files:
                path = inst.path / f.path
                if path.is_file() and path.stat().st_size == f.size:
                    found.setdefault((f.sha256, f.size), path)
        for blob in self.downloads.iterdir():
            if blob.is_file() and not blob.name.endswith(".part"):
                found[(blob.name, blob.stat().st_size)] = blob
        return found

    def local_copy(self, entry: FileEntry, exclude: set[str] | frozenset[str] = frozenset()) -> Path | None:
        """A file already on this agent with ``entry``'s hash and size, or None."""
        if entry.sha256 in exclude:
            return None
        return self.local_files().get((entry.sha256, entry.size))

    def remove_version(self, ref: ModelRef) -> None:
        folder = self.version_dir(ref)
        if folder.exists():
            # Rename first so a crash mid-delete never leaves a half folder that looks installed.
            trash = folder.with_name(f".trash-{ref.version}-{os.getpid()}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        name_dir = self.models / ref.name
        with contextlib.suppress(OSError):
            name_dir.rmdir()  # only when empty

    def prune(self, keep: int, protect: set[ModelRef]) -> list[ModelRef]:
        """Keep ``keep`` versions in all: those in ``protect`` (current, previous), then the newest others.
        Only call it when no install is assembling a staging folder (the machine does, at COMMIT)."""
        versions = sorted(self.installed(), key=lambda i: i.installed_unix, reverse=True)
        removed = []
        kept = sum(1 for inst in versions if inst.ref in protect)
        for inst in versions:
            if inst.ref in protect:
                continue
            if kept < keep:
                kept += 1
                continue
            self.remove_version(inst.ref)
            removed.append(inst.ref)
        for name_dir in self.models.iterdir():  # leftovers of crashed deletes and abandoned stagings
            if name_dir.is_dir():
                for junk in [*name_dir.glob(".trash-*"), *name_dir.glob(".staging-*")]:
                    shutil.rmtree(junk, ignore_errors=True)
        if removed:
            log.info("pruned old model versions: %s", ", ".join(map(str, removed)))
        return removed

    def clear_downloads(self, shas: set[str] | None = None, keep_partials: bool = False) -> int:
        """Remove downloads (all, or only these hashes); returns the bytes freed."""
        freed = 0
        for path in list(self.downloads.iterdir()):
            sha = path.name.removesuffix(".part")
            if shas is not None and sha not in shas:
                continue
            if keep_partials and path.name.endswith(".part"):
                continue
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        return freed


def link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink (same filesystem, no extra space) or copy ``src`` to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        tmp = dest.with_name(dest.name + ".copy")
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)


def fsync_tree(folder: Path) -> None:
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)
