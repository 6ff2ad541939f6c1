"""`recsearch config show KIND [--config FILE] [key=value ...]`: the resolved config as YAML.

Every key is printed, with its default where neither the file nor an override sets it, and a
value that is not the default is followed by a comment saying the default (``batch_size: 64  #
default: 2048``; ``# required`` for a key without one). It is printed after the same checks the
command that reads the config runs (`recsearch train`, `recsearch search`, `recsearch data
synth`); a config the command would refuse is refused here with the same messages
and exit status 2. The output is itself a valid config for that command, except where a required
key is unset: without --config, `config show train` prints the defaults with `data_dir: null  #
required`, to be filled in. `recsearch train
--print-config ...` and `recsearch search --print-config ...` run this on their own arguments
(recsearch.cli).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from recsearch import config

# KIND -> (the command that reads such a config, what the file holds)
KINDS: dict[str, tuple[str, str]] = {
    "train": ("recsearch train", "TrainConfig (configs/train/)"),
    "search": ("recsearch search", "SearchConfig (configs/search/)"),
    "synth": ("recsearch data synth", "SynthConfig (configs/data/)"),
}


def config_class(kind: str) -> type:
    """The dataclass a config of `kind` is built into (imported only when asked for)."""
    if kind == "train":
        from recsearch.train.config import TrainConfig

        return TrainConfig
    if kind == "synth":
        from recsearch.data.synthetic import SynthConfig

        return SynthConfig
    from recsearch.search.settings import SearchConfig

    return SearchConfig


def resolve_dataclass(kind: str, path: str | None, overrides: list[str]) -> dict[str, Any]:
    """A train or synth config as its command builds it: the file (if any) plus the overrides.
    Without a file, a required string key no override sets (train's data_dir) is shown as null,
    `# required`, so that the defaults can be looked at before there is a config."""
    raw = config.load_raw(path, overrides)
    origins = config.Origins.of(path if path is not None else config.COMMAND_LINE, overrides)
    unset = [] if path is not None else [
        f.name for f in dataclasses.fields(config_class(kind))
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.type in (str, "str")
    ]
    resolved = config.to_dict(config.build(config_class(kind), {**raw, **{name: UNSET_PLACEHOLDER for name in unset}}, origins))
    return {key: None if key in unset else value for key, value in resolved.items()}


def resolve_search(path: str | None, overrides: list[str], out_dir: str | None) -> dict[str, Any]:
    """As `recsearch search` writes it to DIR/search.yaml: the base train config in full under
    `base:`, data_dir and output_dir absolute."""
    from recsearch.search.checks import Checker, preflight_problems
    from recsearch.search.settings import load_search_config

    if path is None:
        raise config.ConfigError(["search: --config FILE is required (a search has no config without one)"])
    res = load_search_config(path, overrides)
    # the placement checks `recsearch search` runs next: nothing in the space fits, the reference does not
    checker = Checker(res.tables, res.cfg.topology.topology(), res.cfg.placer, res.cfg.seed)
    problems = preflight_problems(res, checker, config.Origins.of(path, overrides).locate)  # file or command line
    if problems:
        raise config.ConfigError(problems)
    return res.resolved_dict(Path(out_dir or res.cfg.output_dir))


RESOLVERS: dict[str, Callable[[str | None, list[str], str | None], dict[str, Any]]] = {
    "train": lambda path, overrides, out_dir: resolve_dataclass("train", path, overrides),
    "search": resolve_search,
    "synth": lambda path, overrides, out_dir: resolve_dataclass("synth", path, overrides),
}


class _Dumper(yaml.SafeDumper):
    """Block mappings; a list of scalars on one line ([512, 256, 64]), as the shipped configs write it."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flat = all(not isinstance(v, (dict, list)) for v in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


REQUIRED = object()  # a field without a default
UNSET_PLACEHOLDER = "required-but-unset"  # what a required key is built with when only the defaults are shown


def defaults_of(cls: type) -> dict[str, Any]:
    """Each field's default as config.to_dict writes it (nested dataclasses as mappings),
    REQUIRED where there is none."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            out[f.name] = REQUIRED
            continue
        out[f.name] = config.to_dict(value)
    return out


def kind_defaults(kind: str) -> dict[str, Any]:
    defaults = defaults_of(config_class(kind))
    if kind == "search":
        defaults["base"] = defaults_of(config_class("train"))
    return defaults


def _flow(value: Any) -> str:
    """One YAML value on one line: a scalar, or a list or mapping in flow style."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=2**31)
    return text.removesuffix("\n").removesuffix("\n...")


def annotated_yaml(tree: dict[str, Any], defaults: Any, indent: int = 0) -> list[str]:
    """Block YAML of tree, one key a line, each value that is not its default followed by a
    comment saying the default (`# default: 1024`), or `# required` where there is none."""
    lines = []
    pad = " " * indent
    for key, value in tree.items():
        default = defaults.get(key, None) if isinstance(defaults, dict) else None
        name = _flow(key)
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{name}:")
            lines += annotated_yaml(value, default if isinstance(default, dict) else {}, indent + 2)
            continue
        line = f"{pad}{name}: {_flow(value)}"
        if default is REQUIRED:
            line += "  # required"
        elif isinstance(defaults, dict) and key in defaults and value != default:
            line += f"  # default: {_flow(default)}"
        lines.append(line)
    return lines


def render(kind: str, path: str | None, overrides: list[str], out_dir: str | None = None) -> str:
    """The resolved config of `kind` as YAML text, each value that is not the default commented
    with it; ConfigError when the command would refuse the config."""
    return "\n".join(annotated_yaml(RESOLVERS[kind](path, overrides, out_dir), kind_defaults(kind))) + "\n"


def parser(prog: str = "recsearch config show") -> argparse.ArgumentParser:
    kinds = "; ".join(f"{kind}: {what}, read by `{command}`" for kind, (command, what) in KINDS.items())
    p = argparse.ArgumentParser(
        prog=prog,
        description="Print the resolved config as YAML: every key, with its default where the file and "
        "the overrides do not set it, checked as the command checks it (exit 2 if refused). " + kinds,
    )
    p.add_argument("kind", choices=list(KINDS), help="which config")
    p.add_argument("--config", help="YAML file (without one: the defaults and the overrides alone; "
                                    "required for search)")
    p.add_argument("--out", help="search only: the search directory (as `recsearch search --out`)")
    p.add_argument("overrides", nargs="*", help="key=value, value as YAML: hparams.batch_size=4096 "
                                                "arch.bottom_mlp=[512,256,64]")
    return p


def main(argv: list[str] | None = None, prog: str = "recsearch config show") -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not any(w in KINDS or w in ("-h", "--help") for w in words):  # argparse would say "overrides" too
        parser(prog).error(f"say which config: one of {', '.join(KINDS)}")
    args = parser(prog).parse_intermixed_args(words)
    if args.out and args.kind != "search":
        parser(prog).error("--out is a search option")
    try:
        text = render(args.kind, args.config, args.overrides, args.out)
    except config.ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def print_config_main(command: str, argv: list[str]) -> int:
    """`recsearch train|search --print-config ARGS`: the config those ARGS give, printed instead
    of run. The command's other flags that do not change the config are refused by name."""
    rest = [a for a in argv if a != "--print-config"]
    if command == "search":
        if "--resume" in rest or any(a.startswith("--resume=") for a in rest):
            print("recsearch search: --print-config shows a new search's config; a search directory's "
                  "is DIR/search.yaml", file=sys.stderr)
            return 2
        rest = [a for a in rest if a != "--resume-if-exists"]
    return main([command, *rest], prog=f"recsearch {command} --print-config")


if __name__ == "__main__":
    raise SystemExit(main())
