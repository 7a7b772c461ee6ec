"""Process settings shared by the controller and the agent: layered loading, validation errors, printing.

A settings model (``controller/core/settings.py``, ``agent/settings.py``) is a pydantic-settings model. Constructed
with keywords it is only those keywords over the defaults (tests, the demo); :meth:`LayeredSettings.load` builds
the effective settings of a process from four layers, each over the one after it:

1. command-line flags (the ones given),
2. environment variables (the model's prefix + field: ``SLMOPS_<FIELD>`` for the controller,
   ``SLMOPS_AGENT_<FIELD>`` for the agent; a few fields keep an older name, see each model),
3. a settings file (``--config FILE`` or ``SLMOPS_CONFIG``; TOML or YAML, keys are the field names, either flat
   or under a ``[controller]`` / ``[agent]`` table so that one file can serve both processes; relative paths in
   it are relative to the working directory, as on the command line),
4. the defaults.

An invalid value raises :class:`~shared.errors.ConfigError` naming the layer it came from (the flag, the
environment variable or the file) and the field; an unknown key in a file is an error too.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from shared.defaults import CONFIG_ENV
from shared.errors import ConfigError

SECTIONS = ("controller", "agent")  # top-level tables of a settings file shared by both processes
MASK = "***"
# gRPC target schemes an address may use instead of HOST:PORT.
_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


# --- field types ---------------------------------------------------------------------------------------
def check_address(value: str) -> str:
    """``HOST:PORT`` (port 0-65535; ``[::1]:50051`` for IPv6) or a gRPC target such as ``unix:/run/x.sock``."""
    if value.startswith(_GRPC_SCHEMES) and len(value) > value.index(":") + 1:
        return value
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isdigit() and int(port) <= 65535) or any(c.isspace() for c in value):
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def _optional_address(value: str) -> str:
    return check_address(value) if value else value


def split_list(value: object) -> object:
    """A list given as text: comma-separated (``a,b``) or a JSON array (``["a", "b"]``)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg}") from None
    return [part.strip() for part in value.split(",") if part.strip()]


Address = Annotated[str, AfterValidator(check_address)]
OptionalAddress = Annotated[str, AfterValidator(_optional_address)]  # empty: off
StrList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
IntList = Annotated[list[int], NoDecode, BeforeValidator(split_list)]


def secret(default: str = "", **kw: Any) -> Any:
    """A field that is never shown: masked in repr and in ``--print-config``, never echoed in errors."""
    return Field(default, json_schema_extra={"secret": True}, **kw)


def mask_url_password(url: str) -> str:
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]+:)[^@]*@", rf"\g<1>{MASK}@", url, flags=re.I)


# --- validation errors -----------------------------------------------------------------------------------
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_KINDS = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false (1/0, yes/no, on/off)",
    "list_type": "must be a list (comma-separated in a flag or an environment variable)",
}


def _reason(err: Mapping[str, Any], known: list[str], is_secret: bool) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][0]), known, n=1)
        return "unknown setting" + (f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})")
    if kind in _BOUNDS:
        reason = f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}"
    elif kind in _KINDS:
        reason = _KINDS[kind]
    else:
        reason = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if not is_secret and isinstance(value, str | int | float) and len(str(value)) <= 80 and f"'{value}'" not in reason:
        reason += f" (got {value!r})"
    return reason


# --- settings files --------------------------------------------------------------------------------------
def _parse_file(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the settings file: {exc.strerror or exc}") from None
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
            return {} if data is None else data
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else ""
            raise ConfigError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    raise ConfigError(str(path), "", "a settings file must end in .toml, .yaml or .yml")


def read_settings_file(path: Path, section: str) -> dict[str, Any]:
    """The mapping of settings in ``path`` for ``section``; a file with ``controller``/``agent`` tables is split."""
    data = _parse_file(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping of settings, got {type(data).__name__}")
    if any(isinstance(data.get(name), dict) for name in SECTIONS):
        for key, value in data.items():
            if key not in SECTIONS or not isinstance(value, dict):
                raise ConfigError(str(path), key, f"a file with tables takes only {' and '.join(SECTIONS)} tables")
        data = data.get(section, {})
    return data


# --- the base model --------------------------------------------------------------------------------------
class LayeredSettings(BaseSettings):
    """Keyword construction: keywords over defaults. :meth:`load`: flags > environment > file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="SLMOPS_",
        case_sensitive=False,
        env_ignore_empty=True,
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
    )
    section: ClassVar[str] = ""  # this process's table in a shared settings file
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(  # type: ignore[no-untyped-def, override]
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings,)  # the other layers are merged by load(), which knows where each value came from

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def is_secret(cls, field: str) -> bool:
        extra = cls.model_fields[field].json_schema_extra if field in cls.model_fields else None
        return isinstance(extra, dict) and bool(extra.get("secret"))

    @classmethod
    def _env_layer(cls) -> dict[str, tuple[Any, str]]:
        by_key = {cls.model_fields[f].validation_alias or f: f for f in cls.model_fields}
        found = EnvSettingsSource(cls, case_sensitive=False, env_ignore_empty=True)()
        return {by_key[key]: (value, cls.env_name(by_key[key])) for key, value in found.items() if key in by_key}

    @classmethod
    def _file_layer(cls, config_file: str | Path | None) -> dict[str, tuple[Any, str]]:
        given = config_file or os.environ.get(CONFIG_ENV, "")
        if not given:
            return {}
        path = Path(given)
        values = read_settings_file(path, cls.section)
        for key in values:
            if key not in cls.model_fields:
                err = {"type": "extra_forbidden", "loc": (key,)}
                raise ConfigError(str(path), str(key), _reason(err, sorted(cls.model_fields), True))
        return {key: (value, str(path)) for key, value in values.items()}

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        flag_names: Mapping[str, str] | None = None,
    ) -> Self:
        """The effective settings: ``flags`` (field -> value, only those given) > env > file > defaults."""
        layers = {**cls._file_layer(config_file), **cls._env_layer()}
        for field, value in (flags or {}).items():
            layers[field] = (value, (flag_names or {}).get(field) or "--" + field.replace("_", "-"))
        try:
            settings = cls(**{field: value for field, (value, _) in layers.items()})
        except ValidationError as exc:
            raise cls._config_error(exc, {field: source for field, (_, source) in layers.items()}) from None
        settings._origins = {field: source for field, (_, source) in layers.items()}
        return settings

    @classmethod
    def _config_error(cls, exc: ValidationError, origins: Mapping[str, str]) -> ConfigError:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        source = origins.get(field) or f"{cls.section or cls.__name__} settings"
        return ConfigError(source, field, _reason(err, sorted(cls.model_fields), cls.is_secret(field)))

    def origin(self, field: str) -> str:
        """Where the field's value came from: a flag, an environment variable, a file, or ``default``."""
        return self._origins.get(field, "default")

    def shown(self, field: str) -> Any:
        """The field's value as it may be shown: secrets masked, a URL's password masked."""
        value = getattr(self, field)
        if self.is_secret(field):
            return MASK if value else ""
        if isinstance(value, str) and "://" in value:
            return mask_url_password(value)
        return value

    def render(self) -> str:
        """The effective settings as a TOML file (secrets masked), each line saying where its value came from."""
        lines = [f"# slmops {self.section} settings: flags > environment > file ({CONFIG_ENV}) > defaults"]
        for field in type(self).model_fields:
            value = self.shown(field)
            note = self.origin(field) + (", masked" if self.is_secret(field) and value else "")
            if value is None:
                lines.append(f"# {field} = (unset)  # {note}")
                continue
            text = json.dumps(str(value) if isinstance(value, Path) else value)
            lines.append(f"{field} = {text}  # {note}")
        return "\n".join(lines) + "\n"

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            yield name, (self.shown(name) if isinstance(name, str) and name in type(self).model_fields else value)
