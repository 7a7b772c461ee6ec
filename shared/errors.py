"""The project's error classes.

Every error slmops raises on purpose derives from :class:`SlmopsError`. Each class carries the gRPC
status code name it maps to (``code``), so the controller's one interceptor can translate errors without
this module importing grpc. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class SlmopsError(Exception):
    """Base class: an error with a message meant for the person running slmops."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- broad kinds, one per gRPC status the project uses -------------------------------------------------
class InvalidArgument(SlmopsError):
    """The request or a file the user gave is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(SlmopsError):
    code = "NOT_FOUND"


class AlreadyExists(SlmopsError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SlmopsError):
    """The system is not in a state where this can be done (e.g. a rollout already active)."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(SlmopsError):
    code = "UNAUTHENTICATED"


class PermissionDenied(SlmopsError):
    code = "PERMISSION_DENIED"


class Unavailable(SlmopsError):
    """A peer (controller, teacher endpoint, database) cannot be reached right now; retrying may work."""

    code = "UNAVAILABLE"


class ResourceExhausted(SlmopsError):
    """A queue, disk or memory budget is full."""

    code = "RESOURCE_EXHAUSTED"


class Cancelled(SlmopsError):
    code = "CANCELLED"


class Internal(SlmopsError):
    code = "INTERNAL"


# --- narrow errors -------------------------------------------------------------------------------------
class ConfigError(InvalidArgument):
    """A configuration file (profile, recipe, settings) is invalid: names the file, field and reason."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source, self.field, self.reason = source, field, reason
        where = f"{source}: field '{field}'" if field else source
        super().__init__(f"{where}: {reason}")


class UnknownProfile(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(sorted(known)) or "none loaded"
        super().__init__(
            f"unknown device profile '{name}' (known: {listing}); add a YAML file to the profiles "
            "directory or pick one from `slmops profiles list`"
        )


class StubsMissing(SlmopsError):
    """Generated protobuf stubs are absent or older than the .proto files."""


class IntegrityError(SlmopsError):
    """A file's hash or a manifest's signature does not match: the data is refused."""

    code = "DATA_LOSS"


class RecipeError(ConfigError):
    """A build recipe is invalid."""


class StageError(SlmopsError):
    """A factory stage failed; the message names the stage and the cause."""

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {reason}")


class UnsupportedOnThisMachine(FailedPrecondition):
    """A method needs hardware this machine lacks (e.g. QLoRA's 4-bit kernels need a CUDA GPU)."""


class TransferError(Unavailable):
    """A download broke off; it can resume from the saved offset."""


class InstallError(SlmopsError):
    """An install step on the agent failed."""


class ModelLoadError(SlmopsError):
    """A runtime backend could not load a model folder."""

    code = "FAILED_PRECONDITION"
