"""Placement files for `recsearch train` (`plan: FILE`): which rank holds each embedding table.

A placement file is JSON, either a bare object `{table: rank}` or `{"placement": {table: rank},
...}` (what `recsearch place policy place` and the search write; the other keys are information
and are not read). It must name every table of the model exactly once, with an integer rank in
0..world_size-1, and nothing else: a table name the model does not have is a file written for
another model (or a typo) and is refused rather than ignored.

The trainer's `plan:` setting is "torchrec", a placer name (recsearch.placement.registry.PLACERS:
"learned", a baseline) or such a file; `plan_placer` turns it into what
recsearch.placement.plan.LearnedShardingPlanner takes, so every plan is made by that planner.

Standard library only (plus recsearch.remote, so the file may be an fsspec URL, and the
torch-free recsearch.placement.types / registry).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from recsearch import remote
from recsearch.placement.registry import PLACERS, TRAIN_PLACERS
from recsearch.placement.types import REPLICATED_NAME, Placement, PlacementError
from recsearch.types import TableSpec, Topology

MAX_NAMES_SHOWN = 8  # an error lists at most this many table names of each kind


class PlacementFileError(ValueError):
    """A placement file that is not valid JSON, has the wrong shape, or does not fit the model."""


def load_placement(path: str | os.PathLike[str], table_names: Sequence[str], world_size: int) -> dict[str, int]:
    """{table: rank} for every table in table_names, from the placement file at path (a path or
    an fsspec URL). FileNotFoundError when there is no such file; PlacementFileError naming the
    file and every problem (unknown tables, tables without a rank, ranks outside
    0..world_size-1, wrong types, a key given twice)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    try:
        text = remote.read_text(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"placement file {path} not found") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        raise PlacementFileError(f"{path}: key {dup.key!r} appears more than once") from None
    except json.JSONDecodeError as err:
        raise PlacementFileError(f"{path}: not valid JSON: {err}") from err
    if isinstance(raw, dict) and "placement" in raw:
        raw = raw["placement"]
        where = '"placement"'
    else:
        where = "the file"
    if not isinstance(raw, dict):
        raise PlacementFileError(
            f"{path}: expected a JSON object of table name -> rank (or {{\"placement\": {{...}}}}), "
            f"but {where} is {_json_type(raw)}"
        )
    problems = []
    not_ints = {t: r for t, r in raw.items() if isinstance(r, bool) or not isinstance(r, int)}
    replicated = sorted(t for t, r in not_ints.items() if r == REPLICATED_NAME)
    if replicated:
        problems.append(
            f"{len(replicated)} table(s) are {REPLICATED_NAME!r} ({_shown(replicated)}): the trainer "
            f"shards every table table-wise so that its fused embedding optimizer trains it; "
            f"replicated tables are for LearnedShardingPlanner(data_parallel=True) in your own pipeline"
        )
        not_ints = {t: r for t, r in not_ints.items() if r != REPLICATED_NAME}
    if not_ints:
        problems.append(f"ranks must be integers, got {_shown(not_ints)}")
    known = set(table_names)
    unknown = sorted(t for t in raw if t not in known)
    if unknown:
        problems.append(
            f"{len(unknown)} table name(s) the model does not have: {_shown(unknown)} "
            f"(the model's tables: {_shown(list(table_names))})"
        )
    missing = [t for t in table_names if t not in raw]
    if missing:
        problems.append(f"no rank for {len(missing)} of the model's tables: {_shown(missing)}")
    outside = {
        t: r
        for t, r in raw.items()
        if isinstance(r, int) and not isinstance(r, bool) and not 0 <= r < world_size
    }
    if outside:
        problems.append(f"ranks outside 0..{world_size - 1} (world size {world_size}): {_shown(outside)}")
    if problems:
        raise PlacementFileError(f"{path}: " + "; ".join(problems))
    return {name: int(raw[name]) for name in table_names}


class FilePlacer:
    """A Placer that reads the placement from a placement file (table-wise: every table the
    planner places must be in the file)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = path

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        split = sorted({t.name.rsplit("/col", 1)[0] for t in tables if "/col" in t.name})
        if split:
            raise PlacementError(
                f"{self.path}: table(s) {_shown(split)} do not fit one device and are split "
                f"column-wise; a placement file places whole tables (use plan: learned, or give "
                f"the devices more room)"
            )
        ranks = load_placement(self.path, [t.name for t in tables], topology.world_size)
        return Placement(tuple(ranks[t.name] for t in tables), topology.world_size)

    def __repr__(self) -> str:
        return f"FilePlacer({str(self.path)!r})"


def plan_placer(setting: str) -> str | FilePlacer:
    """The placer for the trainer's `plan:` setting: a name LearnedShardingPlanner resolves
    ("torchrec": TorchRec's planner choosing the ranks; "learned"; a baseline), else a
    FilePlacer for the placement file at that path (checked when the plan is made)."""
    if not isinstance(setting, str) or not setting:
        raise ValueError(f"plan must be 'torchrec', a placer name or a file, got {setting!r}")
    if setting in PLACERS and setting not in TRAIN_PLACERS:
        raise ValueError(
            f"plan: {setting!r} may replicate tables (data_parallel), which the trainer does not "
            f"do (it shards every table table-wise so the fused embedding optimizer trains it); "
            f"use one of {', '.join(TRAIN_PLACERS)} or a placement file"
        )
    return setting if setting in TRAIN_PLACERS else FilePlacer(setting)


def check_plan_setting(setting: str, table_names: Sequence[str], world_size: int) -> None:
    """Fail early on a `plan:` that names a placement file this model cannot use (missing,
    malformed, other tables, ranks outside the world); placer names pass."""
    placer = plan_placer(setting)
    if isinstance(placer, FilePlacer):
        load_placement(placer.path, table_names, world_size)


def check_plan_exists(setting: str) -> None:
    """Before any data is read: a `plan:` that is neither a placer name nor an existing file (a
    mistyped placer such as 'size_greddy' reads as a file name) is a FileNotFoundError naming the
    key and the placers; a replicating placer a ValueError (plan_placer)."""
    placer = plan_placer(setting)
    if isinstance(placer, FilePlacer) and not remote.exists(placer.path):
        raise FileNotFoundError(
            f"plan: {setting!r} is no placer ({', '.join(TRAIN_PLACERS)}) and no placement file "
            f"exists there (placement file {setting} not found)"
        )


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _shown(items: Any) -> str:
    """A list or {name: value} for an error, cut to MAX_NAMES_SHOWN entries."""
    if isinstance(items, dict):
        entries = [f"{k!r}: {json.dumps(v)}" for k, v in items.items()]
        opening, closing = "{", "}"
    else:
        entries = [repr(k) for k in items]
        opening, closing = "[", "]"
    more = len(entries) - MAX_NAMES_SHOWN
    text = ", ".join(entries[:MAX_NAMES_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")
    return opening + text + closing


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
