"""Typed configuration from TOML: frozen dataclasses built from a file plus `section.key=value` overrides, with
unknown keys and wrong types rejected by their full key name. The pipeline's `RunConfig` and training's
`TrainConfig` are both loaded with it (it sits here, below both `pipelines/` and `training/`)."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


def load_dataclass(
    cls: type, path: Path, overrides: typing.Sequence[str] = (), layers: typing.Sequence[Path] = ()
) -> Any:
    """Build config dataclass `cls` from a TOML file, then TOML `layers` merged over it table by table, then
    `section.key=value` overrides; ConfigError names the key."""
    data = read_toml(path)
    for layer in layers:
        merge(data, read_toml(layer))
    for item in overrides:
        apply_override(data, item)
    return build(cls, data, prefix="")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def merge(base: dict[str, Any], layer: dict[str, Any]) -> None:
    """Deep-merge `layer` into `base` in place: tables merge key by key, other values replace."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    *sections, leaf = key.strip().split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {section!r} is not a section")
    node[leaf] = parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """Parse a CLI value as a TOML literal (numbers, booleans, arrays); anything else stays a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build(cls: type, data: Any, prefix: str) -> Any:
    """Construct dataclass `cls` from a dict, rejecting unknown keys and wrong types with the key's full name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known in this section: {known})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        _, value_type = typing.get_args(hint)
        return {str(k): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(t, v, key) for t, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has an invalid value {value!r}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value
