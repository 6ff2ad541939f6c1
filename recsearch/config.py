"""YAML files to typed dataclasses, strictly.

Every problem in a file is reported at once, each naming the file and the dotted key: unknown keys,
wrong types, missing required values, and values a dataclass refuses (a ``SettingsError`` from its
``__post_init__`` names each bad field; the file and the section go in front of it:
``train.yaml: hparams.batch_size must be >= 1, got -4``). ``key=value`` overrides from the command
line use the same dotted names (``hparams.batch_size=4096``) and are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recsearch import remote
from recsearch.types import SettingsError

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more problems in a config; ``problems`` lists each as 'file: key: what'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


def load_yaml(path: Path | str) -> dict[str, Any]:
    """A YAML mapping from a file, or from an fsspec URL (recsearch.remote)."""
    if not remote.is_url(path):
        path = Path(path)
    try:
        text = remote.read_text(path)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err}"]) from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(raw).__name__}"])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], origin: str = "<cli>") -> dict:
    """Return a copy of raw with each 'a.b.c=value' set (value parsed as a YAML scalar/list)."""
    out = _deep_copy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"{origin}: override {item!r} is not of the form key=value")
            continue
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            problems.append(f"{origin}: {key}: cannot parse value {text!r}: {err}")
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{origin}: {key}: {part} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def build(cls: type[T], raw: dict[str, Any], origin: str = "<config>") -> T:
    """Build dataclass cls from a mapping, collecting every problem before raising ConfigError."""
    problems: list[str] = []
    value = _build_dataclass(cls, raw, origin, "", problems)
    if problems:
        raise ConfigError(problems)
    return value  # type: ignore[return-value]


def load(cls: type[T], path: Path | str, overrides: list[str] | None = None) -> T:
    raw = apply_overrides(load_yaml(path), overrides or [], origin=f"{path} (overrides)")
    return build(cls, raw, origin=str(path))


def to_dict(value: Any) -> Any:
    """Dataclass tree -> plain YAML/JSON-able values (enums by value, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    return value


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def _build_dataclass(cls: type, raw: Any, origin: str, prefix: str, problems: list[str]) -> Any:
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(raw, dict):
        problems.append(f"{origin}: {where}: expected a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{origin}: {prefix}{key}: unknown key{hint}; known keys: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    before = len(problems)
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{origin}: {prefix}{name}: required key is missing")
            continue
        kwargs[name] = _convert(hints[name], raw[name], origin, f"{prefix}{name}", problems)
    if any(p.startswith(f"{origin}: {prefix}") for p in problems):
        _check_the_rest(cls, kwargs, fields, origin, prefix, problems[before:], problems)
        return None
    try:
        return cls(**kwargs)
    except SettingsError as err:  # each problem starts with the field's name: prefix the section
        problems.extend(f"{origin}: {prefix}{problem}" for problem in err.problems)
        return None
    except (TypeError, ValueError) as err:
        problems.append(f"{origin}: {where}: {err}")
        return None


def _check_the_rest(
    cls: type, kwargs: dict[str, Any], fields: dict[str, Any], origin: str, prefix: str,
    found: list[str], problems: list[str],
) -> None:
    """Some fields of cls are already bad (`found`): still report the values its __post_init__
    refuses among the others (a bad hparams section and max_steps=0 are reported together), by
    building it once with the bad fields left at their defaults."""
    bad = {name for name in kwargs if any(_is_about(p, f"{origin}: {prefix}{name}") for p in found)}
    rest = {name: value for name, value in kwargs.items() if name not in bad}
    for name, f in fields.items():
        if name not in rest and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return  # a required field is missing or bad: cls cannot be built at all
    try:
        cls(**rest)
    except SettingsError as err:
        problems.extend(
            f"{origin}: {prefix}{p}" for p in err.problems if p.split(" ", 1)[0] not in bad
        )
    except (TypeError, ValueError):
        pass  # reported once the fields above are fixed


def _is_about(problem: str, key: str) -> bool:
    """Whether a problem names key itself or something inside it (key.x, key[0])."""
    return problem.startswith(key) and problem[len(key) : len(key) + 1] in (":", ".", "[", " ")


def _convert(tp: Any, value: Any, origin: str, key: str, problems: list[str]) -> Any:
    origin_tp = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin_tp in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, origin, key, problems)
        for option in options:
            trial: list[str] = []
            out = _convert(option, value, origin, key, trial)
            if not trial:
                return out
        problems.append(f"{origin}: {key}: {value!r} matches none of {options}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, origin, f"{key}.", problems)
    if origin_tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{origin}: {key}: expected a list, got {value!r}")
            return None
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, origin, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin_tp is tuple else items
    if origin_tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{origin}: {key}: expected a mapping, got {value!r}")
            return None
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _convert(val_tp, v, origin, f"{key}.{k}", problems) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            problems.append(f"{origin}: {key}: {value!r} is not one of: {allowed}")
            return None
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{origin}: {key}: expected a number, got {value!r}")
            return None
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{origin}: {key}: expected an integer, got {value!r}")
            return None
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{origin}: {key}: expected true or false, got {value!r}")
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{origin}: {key}: expected a string, got {value!r}")
            return None
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        problems.append(f"{origin}: {key}: expected {tp.__name__}, got {value!r}")
        return None
    return value
