"""Cost-sample files: JSON lines, one `types.CostSample` per line, appended as they are measured
(`recsearch place measure --pool`) and read by the cost network. An interrupted writer leaves at
most one torn last line: readers skip it, writers cut it before appending; any other bad line is
an error naming it. Finished files may be
shipped gzipped (`<name>.jsonl.gz`); readers take either.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, TextIO

from recsearch.placement.types import CostSample


def read_samples(path: Path | str) -> list[CostSample]:
    """Every complete line of a samples JSONL file (a torn last line is skipped)."""
    return [CostSample.from_dict(raw) for raw in read_jsonl(Path(path))]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a file (none if it does not exist). A `.gz` file (a shipped,
    finished sample file) is read through gzip. Only a torn last line is skipped (unparsable and
    without its newline: what an interrupted writer leaves and truncate_torn_tail cuts); any
    other bad line is a ValueError naming the file and line number, rather than a file silently
    cut short there."""
    if not path.exists():
        return []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn tail of an interrupted run
            raise ValueError(
                f"{path}:{number}: not a JSON line ({err}); only a torn last line (an "
                "interrupted writer's, no newline) is skipped: repair or remove the line"
            ) from err
    return out


def truncate_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (an interrupted writer's) so that appending starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_sample(f: TextIO, sample: CostSample) -> None:
    """One sample as one JSON line, flushed and synced (a crash loses at most the line being
    written, which `read_jsonl` skips and `truncate_torn_tail` removes)."""
    f.write(json.dumps(sample.to_dict(), separators=(",", ":")) + "\n")
    f.flush()
    os.fsync(f.fileno())
