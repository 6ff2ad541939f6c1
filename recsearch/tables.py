"""Embedding tables at the numpy level: names, reuse histograms and the table-file format.

The one owner of what the data, model, placement and search packages say about tables:

- names: the Criteo categorical feature `i` is `cat_{i}` (TorchRec's default keys) and its table
  is `t_cat_{i}` (`feature_name`, `table_name`);
- the reuse histogram (`reuse_histogram`): DreamShard's access-frequency feature, as `recsearch
  data stats` computes it for real data and `recsearch place tables` for generated pools;
- the table file: a JSON object whose "tables" list holds one TableSpec dict per table beside any
  other top-level keys (what `recsearch data stats` writes, and what pools are), the same
  structure as YAML, or CSV with one row per table (`save_tables`, `read_table_file`,
  `load_tables`, `table_from_dict`).

Imports only numpy, the standard library, recsearch.types and recsearch.remote (yaml when a YAML
file is read or written), so every package may import it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsearch import remote
from recsearch.types import NUM_REUSE_BINS, TableSpec

TABLE_PREFIX = "t_"


def feature_name(index: int) -> str:
    """The key of Criteo categorical feature `index` (0-based): TorchRec's `cat_{i}`."""
    return f"cat_{index}"


def table_name(index: int) -> str:
    """The table of Criteo categorical feature `index`: `t_cat_{i}` (one table per feature)."""
    return TABLE_PREFIX + feature_name(index)


# --------------------------------------------------------------------------------------------
# Reuse histograms


def reuse_bin_labels() -> list[str]:
    """Reuse range of each bin: "1", "2", "3-4", "5-8", ..., ">32768"."""
    labels = ["1", "2"]
    labels += [f"{2 ** (k - 1) + 1}-{2**k}" for k in range(2, NUM_REUSE_BINS - 1)]
    return labels + [f">{2 ** (NUM_REUSE_BINS - 2)}"]


def reuse_histogram(ids: np.ndarray) -> np.ndarray:
    """Share of lookups per power-of-two reuse bin for one batch of one table's ids: the lookups of
    a row used r times in the batch fall in bin ceil(log2 r) (r=1 -> 0, 2 -> 1, 3..4 -> 2, ...,
    > 2^15 -> 16, NUM_REUSE_BINS bins).

    DreamShard's table_configs bins count *distinct rows* per reuse bin instead; the lookup share
    weights each row by its reuse, which is what a kernel's memory traffic follows.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        return np.zeros(NUM_REUSE_BINS)
    _, reuse = np.unique(ids, return_counts=True)
    return histogram_of_counts(reuse)


def histogram_of_counts(reuse: np.ndarray) -> np.ndarray:
    """Reuse histogram from each looked-up row's reuse count: a row hit r times adds r lookups to
    bin ceil(log2(r)) (1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ...; the last bin takes the rest).
    Exact: integer lookup counts divided once by the batch's lookups."""
    bins = np.minimum(np.ceil(np.log2(reuse)).astype(np.int64), NUM_REUSE_BINS - 1)
    lookups = np.bincount(bins, weights=reuse, minlength=NUM_REUSE_BINS)
    return lookups / reuse.sum()


# --------------------------------------------------------------------------------------------
# Table files


def table_from_dict(raw: Mapping[str, Any]) -> TableSpec:
    """TableSpec from its asdict() form (lists back to tuples). Keys that are not TableSpec fields
    are ignored, so files from later versions with more per-table facts still load."""
    fields = {f.name for f in dataclasses.fields(TableSpec)}
    kwargs = {k: v for k, v in raw.items() if k in fields}
    kwargs["reuse_hist"] = tuple(float(x) for x in raw.get("reuse_hist", ()))
    kwargs["feature_names"] = tuple(raw.get("feature_names", ()))
    return TableSpec(**kwargs)


def table_to_dict(table: TableSpec) -> dict[str, Any]:
    return dataclasses.asdict(table)


_CSV_FIXED = ("name", "num_rows", "dim", "pooling_factor", "bytes_per_value", "feature_names")


def _csv_reuse_columns() -> tuple[str, ...]:
    return tuple(f"reuse_{b}" for b in range(NUM_REUSE_BINS))


def tables_to_csv(tables: Sequence[TableSpec]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_FIXED + _csv_reuse_columns())
    for t in tables:
        hist = list(t.reuse_hist) or [""] * NUM_REUSE_BINS
        writer.writerow(
            [t.name, t.num_rows, t.dim, t.pooling_factor, t.bytes_per_value, "|".join(t.feature_names)]
            + hist
        )
    return out.getvalue()


def tables_from_csv(text: str, origin: str = "<csv>") -> list[TableSpec]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("name", "num_rows", "dim") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{origin}: CSV needs columns {missing}")
    tables = []
    for line, row in enumerate(reader, start=2):
        try:
            hist = tuple(
                float(row[c]) for c in _csv_reuse_columns() if row.get(c) not in (None, "")
            )
            tables.append(
                TableSpec(
                    name=row["name"],
                    num_rows=int(row["num_rows"]),
                    dim=int(row["dim"]),
                    pooling_factor=float(row.get("pooling_factor") or 1.0),
                    reuse_hist=hist,
                    feature_names=tuple(
                        f for f in (row.get("feature_names") or "").split("|") if f
                    ),
                    bytes_per_value=int(row.get("bytes_per_value") or 4),
                )
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin}: line {line}: {err}") from err
    return tables


def tables_payload(tables: Sequence[TableSpec], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON/YAML structure of a table file: info's keys, then "tables"."""
    return {**(info or {}), "tables": [table_to_dict(t) for t in tables]}


def save_tables(
    path: Path | str,
    tables: Sequence[TableSpec],
    info: Mapping[str, Any] | None = None,
    *,
    json_indent: int = 1,
) -> None:
    """Tables to .json (the `recsearch data stats` format, with info keys beside "tables"),
    .yaml/.yml (same structure) or .csv (one row per table, info dropped)."""
    path = Path(path)
    payload = tables_payload(tables, info)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(payload, indent=json_indent) + "\n"
    elif suffix in (".yaml", ".yml"):
        import yaml  # only for YAML files

        text = yaml.safe_dump(payload, sort_keys=False)
    elif suffix == ".csv":
        text = tables_to_csv(tables)
    else:
        raise ValueError(f"{path}: table files are .json, .yaml/.yml or .csv")
    remote.write_text(path, text)


def read_table_file(path: Path | str) -> tuple[list[TableSpec], dict[str, Any]]:
    """(tables, the file's other top-level keys) from a .json/.yaml/.yml/.csv table file (any
    other suffix is read as JSON, as `recsearch data stats` files are)."""
    path = Path(path)
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return tables_from_csv(text, str(path)), {}
    try:
        if suffix in (".yaml", ".yml"):
            import yaml  # only for YAML files

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
        info = {k: v for k, v in raw.items() if k != "tables"}
        return [table_from_dict(t) for t in raw["tables"]], info
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a table statistics file: {err}") from err


def load_tables(path: Path | str) -> list[TableSpec]:
    """The tables of a table file (`read_table_file` without the other keys)."""
    return read_table_file(path)[0]
