"""Run configuration: YAML files loaded into frozen dataclasses.

A config is a tree of frozen dataclasses (`Config` at the root). Loading is strict:

* an unknown key is an error that names it and lists the allowed keys;
* a value of the wrong type, or outside its allowed choices, is an error that names the
  dotted key, what was expected and what was received;
* ``overrides`` (``--set key=value`` on the command line) use dotted keys and YAML values,
  e.g. ``train.epochs=3`` or ``model.filters=[8,16,32]``.

The run directory keeps the resolved config (``config.yaml``) beside ``model.keras``, so
inference reads exactly the preprocessing the model was trained with.
The schema (the dataclass sections and their checks) lives in `segmentation.config_schema`;
this module loads, overrides, saves and hashes configs and re-exports the schema.

Example:
    >>> config = load_config("configs/cpu.yaml", overrides=["train.epochs=2"])
    >>> config.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from segmentation.config_schema import (  # the schema: re-exported
    DEFAULT_LOSS,
    Config,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from segmentation.io import atomic_write

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "InferenceConfig",
    "EvaluationConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "apply_overrides",
    "DEFAULT_LOSS",
    "CONFIG_FORMAT_VERSION",
    "config_hash",
]


CONFIG_FORMAT_VERSION = 1
"""Format of a saved config: `save_config` writes it (``format_version``) and the config's
`config_hash` (``config_sha256``) at the top of the file; `load_config` reads and drops them."""
_META_KEYS = ("format_version", "config_sha256")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, *, overrides: Iterable[str] = ()) -> Config:
    """Loads a YAML config file (or the defaults) and applies ``key=value`` overrides.

    Args:
        path: A YAML file; ``None`` starts from the defaults.
        overrides: Dotted ``key=value`` strings; values are parsed as YAML.

    Returns:
        The validated, frozen `Config`.

    Raises:
        ConfigError: The file is missing or not YAML, or a key or value is not valid. The
            message names the file and the dotted key.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"Expected a YAML config file. Received: config={path} (no such file)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"Expected valid YAML in config={path}. Received: {error}") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Expected a mapping at the top of config={path}. Received: {type(loaded).__name__}"
            )
        data = _drop_meta_keys(loaded, source=source)
    overrides = list(overrides)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as error:
        raise ConfigError(f"{error} ({_blame(error, data, overrides, source)})") from None


def _drop_meta_keys(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """``data`` without ``format_version`` / ``config_sha256`` (checked, not applied)."""
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise ConfigError(
            f"Expected format_version <= {CONFIG_FORMAT_VERSION} (this lungseg) in config={source}. "
            f"Received: format_version={version!r} (written by a newer lungseg?)"
        )
    return {k: v for k, v in data.items() if k not in _META_KEYS}


def _blame(error: ConfigError, data: Mapping[str, Any], overrides: list[str], source: str) -> str:
    """Names what caused ``error``: the ``--set`` items whose keys it names, or the file."""
    text = str(error)
    named = [o for o in overrides if o.split("=", 1)[0].strip() and o.split("=", 1)[0].strip() in text]
    if not named and overrides:
        try:
            config_from_dict(data)
        except ConfigError:
            named = []
        else:  # the file alone is valid: the overrides broke it
            named = overrides
    if named:
        return "from --set " + " ".join(named)
    return f"config: {source}"


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with dotted ``key=value`` overrides applied.

    Raises:
        ConfigError: An override is not of the form ``section.key=value``.
    """
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Expected an override of the form key=value. Received: --set {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"Expected a dotted key before '='. Received: --set {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"Expected a YAML value in --set {item!r}. Received: {error}") from error
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"Expected {part!r} to be a section in --set {item!r}. Received: {child!r}")
            node = child
        node[parts[-1]] = value
    return result


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Builds a validated `Config` from a nested mapping (unknown keys are errors)."""
    return _build(Config, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Converts a config (or any of its sections) to plain YAML/JSON-safe Python types."""
    return _plain(config)


def save_config(config: Config, path: str | Path) -> Path:
    """Writes the resolved config as YAML, atomically (temp file, then rename).

    The file starts with ``format_version`` and ``config_sha256`` (`config_hash`), so a
    reader can tell a truncated or edited file from the one training wrote.
    """
    meta = {"format_version": CONFIG_FORMAT_VERSION, "config_sha256": config_hash(config)}
    text = yaml.safe_dump({**meta, **config_to_dict(config)}, sort_keys=False)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def config_hash(config: Config | Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a config, or of the mapping read from a saved one: its sorted YAML.

    This is the ``config_hash`` of ``manifest.json`` and the ``config_sha256`` of a saved
    ``config.yaml``; hashing the mapping as read (not a re-built `Config`) keeps the hashes
    of files written before a key was added valid.
    """
    data = config if isinstance(config, Mapping) else config_to_dict(config)
    data = {k: v for k, v in data.items() if k not in _META_KEYS}
    text = yaml.safe_dump(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- helpers


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a mapping for {where}. Received: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + str(k) for k in unknown)}. "
            f"Expected one of: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Invalid value in {where}: {error}") from error


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"Invalid value for {key}: {value!r}. " + " Or: ".join(errors))
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"Expected {key} to be one of {list(args)}. Received: {key}={value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Expected {key} to be a list. Received: {key}={value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"Expected {key} to have {len(args)} values. Received: {key}={list(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"Expected {key} to be a mapping. Received: {key}={value!r}")
        return _deep_copy(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"Expected {key} to be true or false. Received: {key}={value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Expected {key} to be an integer. Received: {key}={value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Expected {key} to be a number. Received: {key}={value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"Expected {key} to be finite. Received: {key}={value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"Expected {key} to be a string. Received: {key}={value!r}")
        return value
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return value.item()
    return value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
