"""params.yaml -> Config: reading the file, profiles and `-S` overrides (the schema is medgen.config).

Layout of params.yaml: top-level ``profile`` and ``seed``, one mapping per section (one section per
dataclass of medgen.config), and ``profiles.<name>``: flat ``section.key: value`` overrides applied on top
of the defaults when that profile is active. Command-line overrides use the same ``section.key=value``
syntax as ``dvc exp run -S`` and are applied last. Unknown keys, wrong types, duplicate keys, empty or
non-UTF-8 files raise ConfigError naming the key or the file, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from medgen.config import Config, _require
from medgen.errors import ConfigError

PROFILE_ENV = "MEDGEN_PROFILE"

_TOP_LEVEL = ("profile", "seed")


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name not in _TOP_LEVEL}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against the dataclass annotation; lists become tuples (configs are frozen)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        _require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
    elif hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        _require(isinstance(value, str), key, f"expected a string, got {value!r}")
    elif origin is tuple:
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        value = tuple(_coerce(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value))
    return value


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    _require(isinstance(values, dict), name, f"must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        _require(key in known, f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' -> ('section.key', value); the value is parsed as YAML, as dvc -S does."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    _require(bool(key), text, "override has an empty key")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None


def _apply(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    _require(len(parts) in (1, 2), dotted, "expected 'key' or 'section.key'")
    if len(parts) == 1:
        _require(parts[0] in _TOP_LEVEL, dotted, f"unknown top-level key (known: {', '.join(_TOP_LEVEL)})")
        tree[parts[0]] = value
        return
    section, key = parts
    _require(section in _section_types(), dotted, f"unknown section {section!r}")
    tree.setdefault(section, {})
    _require(isinstance(tree[section], dict), section, "must be a mapping")
    tree[section][key] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a mapping naming one key twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"duplicate key {key!r} (line {line}); each key may appear once per section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML -> Python with duplicate keys rejected (ConfigError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass


def read_params(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping; missing, unreadable, non-UTF-8, empty, invalid, duplicate-key or
    non-mapping files are a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        tree = parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    _require(tree is not None, str(path), "is empty; expected a mapping of sections (see the repository's params.yaml)")
    _require(isinstance(tree, dict), str(path), f"top level must be a mapping, got {type(tree).__name__}")
    return tree


def build_config(tree: dict[str, Any], profile: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- params tree <- profile overrides <- command-line overrides, then validate."""
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    profiles = tree.pop("profiles", {}) or {}
    _require(isinstance(profiles, dict), "profiles", "must be a mapping of profile name -> overrides")
    active = profile or os.environ.get(PROFILE_ENV) or tree.get("profile", "full")
    _require(isinstance(active, str), "profile", f"expected a name, got {active!r}")
    _require(
        active == "full" or active in profiles,
        "profile",
        f"unknown profile {active!r} (known: full, {', '.join(profiles)})",
    )
    for dotted, value in (profiles.get(active) or {}).items():
        _apply(tree, dotted, value)
    for text in overrides:
        _apply(tree, *parse_override(text))
    tree["profile"] = active
    sections = _section_types()
    for key in tree:
        _require(
            key in sections or key in _TOP_LEVEL, key, f"unknown key (known: {', '.join([*_TOP_LEVEL, *sections])})"
        )
    seed = _coerce("seed", tree.get("seed", Config.seed), int)
    _require(seed >= 0, "seed", "must be >= 0")
    built = {name: _build_section(name, cls, tree.get(name) or {}) for name, cls in sections.items()}
    return Config(profile=active, seed=seed, **built)


def load_config(
    path: str | Path = "params.yaml", profile: str | None = None, overrides: typing.Sequence[str] = ()
) -> Config:
    """Load params.yaml (default: the one in the working directory) into a validated Config."""
    return build_config(read_params(path), profile=profile, overrides=overrides)
