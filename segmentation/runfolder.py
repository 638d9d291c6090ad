"""A training run folder, validated as a whole before anything uses it.

``lungseg train`` writes ``config.yaml`` (the resolved config, headed by
``format_version`` and ``config_sha256``), ``model.keras`` and ``manifest.json`` (whose
``config_hash`` is the hash of the config the model was trained with). `load_run_config`
reads the config the way inference must see it:

* the folder exists and holds ``config.yaml`` (and ``model.keras`` when asked);
* ``config.yaml`` is a YAML mapping holding every section of a config (`REQUIRED_SECTIONS`):
  a truncated or empty file is an error that lists what is missing, never a run on
  built-in defaults;
* its ``config_sha256`` equals the hash of what was loaded (a truncated or edited file
  fails), and so does ``manifest.json``'s ``config_hash`` when the manifest is there;
* a file without ``format_version`` (written before version 1) is still read when every
  section is there; keys a section lacks take their defaults, with a warning that names them.

No TensorFlow here: a bad run folder is reported before a model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from segmentation.config import (
    CONFIG_FORMAT_VERSION,
    Config,
    ConfigError,
    config_hash,
    load_config,
)

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "REQUIRED_SECTIONS",
    "RunFolderError",
    "load_run_config",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
REQUIRED_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
"""Every top-level section of a saved config (all of them shape preprocessing or inference)."""


class RunFolderError(ConfigError):
    """A run folder is missing, incomplete or inconsistent. The message names the file."""


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise RunFolderError(
            f"Expected a readable YAML config written by lungseg train. Received: file='{path}' "
            f"({type(error).__name__}: {error})"
        ) from error
    if not isinstance(data, dict):
        raise RunFolderError(
            "Expected a complete config (a YAML mapping with the sections "
            f"{', '.join(REQUIRED_SECTIONS)}) in '{path}'. Received: "
            f"{'an empty file' if data is None else type(data).__name__}"
        )
    return data


def _missing_keys(data: dict[str, Any]) -> list[str]:
    """Dotted keys of the dataclass sections that ``data`` lacks."""
    missing = []
    for field in dataclasses.fields(Config):
        section = data.get(field.name)
        if field.default_factory is dataclasses.MISSING or not isinstance(section, dict):
            continue
        default = field.default_factory()
        if dataclasses.is_dataclass(default):
            missing += [f"{field.name}.{f.name}" for f in dataclasses.fields(default)
                        if f.name not in section]
    return missing


def _manifest_hash(run: Path) -> str | None:
    path = run / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError) as error:
        raise RunFolderError(
            f"Expected valid JSON in '{path}'. Received: {type(error).__name__}: {error}"
        ) from error
    return value if isinstance(value, str) else None


def load_run_config(model_dir: str | os.PathLike, *, need_model: bool = True) -> Config:
    """Loads and checks the config of a training run folder (see the module docstring).

    Args:
        model_dir: The run folder (``--model``).
        need_model: Also require ``model.keras``.

    Returns:
        The run's `Config`.

    Raises:
        RunFolderError: Missing folder or file, an empty, truncated or incomplete
            ``config.yaml`` (lists the missing sections), a hash that does not match
            (``config.yaml`` edited or cut, or not the model's), a newer format.
        TypeError: ``model_dir`` is not path-like.
    """
    if not isinstance(model_dir, (str, os.PathLike)) or isinstance(model_dir, bytes):
        raise TypeError(f"Expected model_dir to be a str or os.PathLike. Received: model_dir={model_dir!r}")
    run = Path(model_dir)
    if not run.is_dir():
        raise RunFolderError(
            f"Expected a training run folder with {MODEL_FILE} and {CONFIG_FILE}. "
            f"Received: --model '{run}' ({'not a folder' if run.exists() else 'not found'})"
        )
    needed = (CONFIG_FILE, MODEL_FILE) if need_model else (CONFIG_FILE,)
    missing = [name for name in needed if not (run / name).is_file()]
    if missing:
        raise RunFolderError(
            f"Expected {' and '.join(missing)} in the run folder '{run}' (written by lungseg "
            f"train; the config keeps the preprocessing the model was trained with). "
            f"Received: --model '{run}' without {', '.join(missing)}"
        )
    path = run / CONFIG_FILE
    data = _read_mapping(path)
    absent = [s for s in REQUIRED_SECTIONS if s not in data]
    if absent:
        raise RunFolderError(
            f"Expected a complete config in '{path}' (every section lungseg train writes). "
            f"Received: no {', '.join(absent)} section(s); the file is empty, truncated or not "
            "a run's config. Copy the config.yaml that lungseg train wrote beside model.keras"
        )
    config = load_config(path)
    actual = config_hash(data)
    stored = data.get("config_sha256")
    version = data.get("format_version", 0)
    if version >= 1 and stored != actual:
        raise RunFolderError(
            f"Expected the config_sha256 of '{path}' to match its content (lungseg train wrote "
            f"both). Received: config_sha256={stored!r}, content hash {actual}; the file was "
            "edited or cut. Restore it, or use predict's options (--threshold, --window, "
            "--tta/--no-tta) instead of editing the run"
        )
    if version < 1:
        absent_keys = _missing_keys(data)
        if absent_keys:
            logger.warning("%s (written before format_version %d) lacks %s; their defaults are used",
                           path, CONFIG_FORMAT_VERSION, ", ".join(absent_keys))
    recorded = _manifest_hash(run)
    if recorded is not None and recorded != actual:
        raise RunFolderError(
            f"Expected '{path}' to be the config the model was trained with (config_hash in "
            f"'{run / MANIFEST_FILE}'). Received: config hash {actual[:12]}, manifest "
            f"{recorded[:12]}; restore the run's config.yaml"
        )
    return config
