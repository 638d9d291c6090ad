"""Build losses from configuration (strings or dicts from YAML).

Forms accepted by :func:`get_loss`::

    "dice" | "bce" | "focal" | "tversky" | "focal_tversky" | "hybrid"
    {"name": "dice", "smooth": 1.0, "batch": True}
    {"name": "hybrid",
     "components": [{"name": "bce", "weight": 0.5}, {"name": "dice", "weight": 0.5}]}
    {"name": "hybrid", "weighting": "linear", "ramp_epochs": [0, 50],
     "components": [{"name": "bce", "weight": 1.0, "final_weight": 0.2},
                    {"name": "dice", "weight": 0.0, "final_weight": 0.8}]}
    {"name": "hybrid", "weighting": "learned", "components": ["bce", "dice"]}

A component is a name or a dict with ``name``, optional ``weight`` and
``final_weight`` (linear ramp), and that loss's own arguments. Components
inherit the hybrid's ``from_logits`` and ``debug`` unless they set them.
Unknown names and arguments raise a ``ValueError`` listing the allowed ones.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import keras

from losses.bce import BCELoss
from losses.dice import DiceLoss
from losses.focal import FocalLoss
from losses.hybrid import HybridLoss
from losses.tversky import FOCAL_TVERSKY_GAMMA, TverskyLoss

_SINGLE = {
    "bce": (BCELoss, {}),
    "dice": (DiceLoss, {}),
    "focal": (FocalLoss, {}),
    "tversky": (TverskyLoss, {}),
    "focal_tversky": (TverskyLoss, {"gamma": FOCAL_TVERSKY_GAMMA, "name": "focal_tversky_loss"}),
}
LOSS_NAMES = tuple(sorted(_SINGLE)) + ("hybrid",)
_HYBRID_KEYS = ("components", "weighting", "ramp_epochs", "initial_log_vars",
                "log_var_learning_rate", "from_logits", "debug", "reduction")
_COMPONENT_KEYS = ("weight", "final_weight")


def _keyword_names(cls: type) -> tuple[str, ...]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    # ``name`` is the config's type key, so the Keras loss name is not settable here.
    return tuple(p.name for p in parameters
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "name")


def _split_name(config: Any, where: str) -> tuple[str, dict]:
    if isinstance(config, str):
        name, options = config, {}
    elif isinstance(config, Mapping):
        options = dict(config)
        if "name" not in options:
            raise ValueError(
                f"Expected a 'name' key, one of {list(LOSS_NAMES)}. Received: {where}={config!r}"
            )
        name = options.pop("name")
    else:
        raise TypeError(f"Expected a loss name or a dict. Received: {where}={config!r}")
    if not isinstance(name, str) or name.lower() not in LOSS_NAMES:
        raise ValueError(
            f"Expected a loss name in {list(LOSS_NAMES)}. Received: {where}.name={name!r}"
        )
    return name.lower(), options


def _check_keys(options: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"Expected arguments among {sorted(allowed)} for {where}. Received: unknown={unknown}"
        )


def _build_single(name: str, options: dict, where: str) -> keras.losses.Loss:
    cls, defaults = _SINGLE[name]
    _check_keys(options, _keyword_names(cls), f"{where} ({name})")
    return cls(**{**defaults, **options})


def _build_hybrid(options: dict, where: str) -> HybridLoss:
    _check_keys(options, _HYBRID_KEYS, f"{where} (hybrid)")
    components_config = options.pop("components", None)
    inherited = {k: options[k] for k in ("from_logits", "debug") if k in options}
    if components_config is None:
        components_config = [{"name": "bce", "weight": 0.5}, {"name": "dice", "weight": 0.5}]
    if not isinstance(components_config, (list, tuple)) or not components_config:
        raise ValueError(
            "Expected a non-empty list of components. "
            f"Received: {where}.components={components_config!r}"
        )
    components, weights, final_weights = [], [], []
    for i, entry in enumerate(components_config):
        cwhere = f"{where}.components[{i}]"
        name, component_options = _split_name(entry, cwhere)
        if name == "hybrid":
            raise ValueError(
                f"Expected a component in {list(_SINGLE)}. Received: {cwhere}.name='hybrid'"
            )
        cls = _SINGLE[name][0]
        _check_keys(component_options, _keyword_names(cls) + _COMPONENT_KEYS, f"{cwhere} ({name})")
        weights.append(component_options.pop("weight", None))
        final_weights.append(component_options.pop("final_weight", None))
        components.append(_build_single(name, {**inherited, **component_options}, cwhere))
    kwargs = dict(options)
    kwargs["weights"] = _all_or_none(weights, "weight", where)
    final = _all_or_none(final_weights, "final_weight", where)
    if final is not None:
        kwargs["final_weights"] = final
    return HybridLoss(components, **kwargs)


def _all_or_none(values: list, key: str, where: str) -> list | None:
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError(
            f"Expected '{key}' on every component or on none. Received: {where} {key}s={values}"
        )
    return values


def get_loss(config: str | Mapping | keras.losses.Loss) -> keras.losses.Loss:
    """Builds a lungseg loss from a name, a config dict, or returns a loss as is.

    Args:
        config: ``"dice"`` etc., a dict with ``name`` and arguments, or a loss.

    Returns:
        A ``DiceLoss``, ``BCELoss``, ``FocalLoss``, ``TverskyLoss`` or
        ``HybridLoss``.

    Raises:
        ValueError: unknown name or argument (the message lists the allowed ones).
        TypeError: ``config`` of another type.
    """
    if isinstance(config, keras.losses.Loss):
        return config
    name, options = _split_name(config, "config")
    if name == "hybrid":
        return _build_hybrid(options, "config")
    return _build_single(name, options, "config")
