"""YAML files to typed dataclasses, strictly.

Every problem in a file is reported at once, each naming the file and the dotted key: unknown keys,
wrong types, missing required values, and values a dataclass refuses (a ``SettingsError`` from its
``__post_init__`` names each bad field; the file and the section go in front of it:
``train.yaml: hparams.batch_size must be >= 1, got -4``). ``key=value`` overrides from the command
line use the same dotted names (``hparams.batch_size=4096``) and are parsed as YAML values; a list
is written comma-separated, ``arch.bottom_mlp=512,256,64`` (the list syntax of every recsearch
command, recsearch.cliargs), or as YAML, ``[512,256,64]``; a mapping value replaces the whole
section it names (``hparams={batch_size: 4}`` leaves the other hparams at their defaults, not the
file's). A problem with a value set there names
the override, not the file (``Origins``):
``command line: hparams.batchsize=4: unknown key (did you mean 'batch_size'?) ...``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
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


COMMAND_LINE = "command line"


@dataclasses.dataclass(frozen=True)
class Origins:
    """Where each key of a config came from: the file (``file``), or a ``key=value`` given on the
    command line (``overrides``: (dotted key, the override as typed), in the order given)."""

    file: str
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, file: Path | str, overrides: list[str] | None = None) -> Origins:
        pairs = tuple((item.partition("=")[0], item) for item in overrides or [] if "=" in item)
        return cls(str(file), pairs)

    def override_for(self, key: str) -> tuple[str, str] | None:
        """The last override that set key or a section holding it, as (its key, its text)."""
        for set_key, item in reversed(self.overrides):
            if key == set_key or key.startswith((f"{set_key}.", f"{set_key}[")):
                return set_key, item
        return None

    def locate(self, problem: str) -> str:
        """'origin: problem' for a problem that starts with its dotted key ('hparams.seed: ...',
        'hparams.batch_size must be >= 1'): the override that set the key, else the file."""
        match = _LEADING_KEY.match(problem)
        found = self.override_for(match.group(0)) if match else None
        if found is None:
            return f"{self.file}: {problem}"
        set_key, item = found
        if problem.startswith(set_key) and problem[len(set_key) : len(set_key) + 2] == ": ":
            problem = problem[len(set_key) + 2 :]  # the override already names the key
        elif problem.startswith(set_key) and problem[len(set_key) : len(set_key) + 1] == " ":
            problem = problem[len(set_key) + 1 :]
        return f"{COMMAND_LINE}: {item}: {problem}"

    def section(self, name: str, file: str) -> Origins:
        """The origins of the mapping under key `name`, whose own keys come from `file`."""
        inner = tuple((k[len(name) + 1 :], item) for k, item in self.overrides if k.startswith(f"{name}."))
        whole = [item for k, item in self.overrides if k == name]
        return Origins(f"{COMMAND_LINE}: {whole[-1]}" if whole else file, inner)


_LEADING_KEY = re.compile(r"[^\s:]+")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict:
    """Return a copy of raw with each 'a.b.c=value' set (value parsed as YAML: a scalar, or a list
    such as [1,2]); a bad override is reported as 'command line: <override>: what'."""
    out = _deep_copy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        where = f"{COMMAND_LINE}: {item}"
        if not sep or not key:
            problems.append(f"{where}: not of the form key=value (e.g. hparams.batch_size=4096)")
            continue
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            problems.append(f"{where}: cannot parse the value as YAML: {' '.join(str(err).split())}")
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{where}: {part} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def build(cls: type[T], raw: dict[str, Any], origin: str | Origins = "<config>") -> T:
    """Build dataclass cls from a mapping, collecting every problem before raising ConfigError;
    each problem names where its key came from (`origin`: a file name, or Origins)."""
    origins = origin if isinstance(origin, Origins) else Origins(origin)
    problems: list[str] = []
    value = _build_dataclass(cls, raw, "", problems)
    if problems:
        raise ConfigError([origins.locate(p) for p in problems])
    return value  # type: ignore[return-value]


def load(cls: type[T], path: Path | str, overrides: list[str] | None = None) -> T:
    raw = apply_overrides(load_yaml(path), overrides or [])
    return build(cls, raw, Origins.of(path, overrides))


def load_raw(path: Path | str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping a config file plus key=value overrides give (no file: the overrides alone)."""
    return apply_overrides(load_yaml(path) if path is not None else {}, overrides or [])


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


def _comma_list(text: str) -> list[Any]:
    """'512,256,64' -> [512, 256, 64]: each item read as a YAML scalar (an unreadable one stays a
    string, and its type check reports it)."""
    items: list[Any] = []
    for item in text.split(","):
        try:
            items.append(yaml.safe_load(item) if item.strip() else item)
        except yaml.YAMLError:
            items.append(item)
    return items


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def _build_dataclass(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{prefix}{key}: unknown key{hint}; known keys: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    before = len(problems)
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{name}: required key is missing")
            continue
        kwargs[name] = _convert(hints[name], raw[name], f"{prefix}{name}", problems)
    if any(p.startswith(f"{prefix}") for p in problems):
        _check_the_rest(cls, kwargs, fields, prefix, problems[before:], problems)
        return None
    try:
        return cls(**kwargs)
    except SettingsError as err:  # each problem starts with the field's name: prefix the section
        problems.extend(f"{prefix}{problem}" for problem in err.problems)
        return None
    except (TypeError, ValueError) as err:
        problems.append(f"{where}: {err}")
        return None


def _check_the_rest(
    cls: type, kwargs: dict[str, Any], fields: dict[str, Any], prefix: str,
    found: list[str], problems: list[str],
) -> None:
    """Some fields of cls are already bad (`found`): still report the values its __post_init__
    refuses among the others (a bad hparams section and max_steps=0 are reported together), by
    building it once with the bad fields left at their defaults."""
    bad = {name for name in kwargs if any(_is_about(p, f"{prefix}{name}") for p in found)}
    rest = {name: value for name, value in kwargs.items() if name not in bad}
    for name, f in fields.items():
        if name not in rest and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return  # a required field is missing or bad: cls cannot be built at all
    try:
        cls(**rest)
    except SettingsError as err:
        problems.extend(
            f"{prefix}{p}" for p in err.problems if p.split(" ", 1)[0] not in bad
        )
    except (TypeError, ValueError):
        pass  # reported once the fields above are fixed


def _is_about(problem: str, key: str) -> bool:
    """Whether a problem names key itself or something inside it (key.x, key[0])."""
    return problem.startswith(key) and problem[len(key) : len(key) + 1] in (":", ".", "[", " ")


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin_tp = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin_tp in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, key, problems)
        for option in options:
            trial: list[str] = []
            out = _convert(option, value, key, trial)
            if not trial:
                return out
        problems.append(f"{key}: {value!r} matches none of {options}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, f"{key}.", problems)
    if origin_tp in (tuple, list):
        if isinstance(value, str) and "," in value:
            value = _comma_list(value)  # arch.bottom_mlp=512,256,64: the command line's list syntax
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list (a,b,c or [a, b, c]), got {value!r}")
            return None
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin_tp is tuple else items
    if origin_tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return None
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _convert(val_tp, v, f"{key}.{k}", problems) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            problems.append(f"{key}: {value!r} is not one of: {allowed}")
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
            problems.append(f"{key}: expected a number, got {value!r}")
            return None
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
            return None
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
            return None
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        problems.append(f"{key}: expected {tp.__name__}, got {value!r}")
        return None
    return value
