"""Command-line lists, one syntax for every command (README.md, "Lists on the command line").

A list of values is written comma-separated, without spaces: ``--hash-size 1000,2000``,
``--devices 2,4``, ``--objectives auc,latency_p50_ms``, and the same in a ``key=value`` override:
``arch.bottom_mlp=512,256,64`` (recsearch.config). A flag that takes a list also takes its values
as separate words, as before (``--devices 2 4``), and words and commas may be mixed. Lists of
files are separate words only (what a shell glob gives), never split at commas.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def split_items(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c']; an empty item ('a,,b', 'a,') is refused."""
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty item in a comma-separated list")
    return [item.strip() for item in items]


def items_of(item_type: Callable[[str], T], choices: Iterable[str] | None = None) -> Callable[[str], list[T]]:
    """An argparse `type`: one word of a list flag, comma-separated items each converted by
    item_type (and, with choices, each one of them)."""
    allowed = list(choices) if choices is not None else None
    name = getattr(item_type, "__name__", "value")

    def parse(text: str) -> list[T]:
        out = []
        for item in split_items(text):
            if allowed is not None and item not in allowed:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of: {', '.join(allowed)}")
            try:
                out.append(item_type(item))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {name}") from None
        return out

    parse.__name__ = f"comma-separated {name} list"
    return parse


class Extend(argparse.Action):
    """nargs='+' of items_of(...) words, flattened: `--devices 2,4 8` -> [2, 4, 8]."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        words: Sequence[list[Any]] = values if isinstance(values, list) else [values]
        setattr(namespace, self.dest, [item for word in words for item in word])


def list_flag(item_type: Callable[[str], T], choices: Iterable[str] | None = None, words: bool = True) -> dict[str, Any]:
    """add_argument keywords for a list of values: `parser.add_argument("--devices",
    **list_flag(int), ...)` takes `--devices 2,4` and `--devices 2 4`. words=False: one word only
    (`--objectives auc,latency_p50_ms`), for a command with positional arguments, which a list of
    words would swallow."""
    if not words:
        return {"type": items_of(item_type, choices)}
    return {"nargs": "+", "type": items_of(item_type, choices), "action": Extend}
