"""`recsearch report` reads a search directory and writes nothing there: no journal touched, no
lock file created, so a search on read-only storage (an archive, another user's directory, a
snapshot) can be reported with --out elsewhere."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recsearch.search import report
from recsearch.search.results import read_search
from tests.conftest import write_dataset
from tests.search.fake_search import FakeSearch, choices


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its modification time and size."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _search(tmp_path: Path) -> FakeSearch:
    data = tmp_path / "data"
    write_dataset(data)
    search = FakeSearch(tmp_path / "search", data)
    search.reference(0.75, 1.0)
    search.candidate(choices(bottom_width=1), 0.76, 0.95)
    search.candidate(choices(bottom_width=2), 0.77, 1.30)
    (search.root / "journal.jsonl.lock").unlink()  # a copied or archived search may not have it
    return search


def test_report_on_a_search_it_may_not_write_leaves_it_untouched(tmp_path):
    search = _search(tmp_path)
    before = _snapshot(search.root)
    modes = {p: p.stat().st_mode for p in [search.root, *search.root.rglob("*")]}
    for path in modes:  # read-only for everyone (root ignores this: the snapshot check still holds)
        path.chmod(stat.S_IMODE(modes[path]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        if os.geteuid() != 0:
            assert not os.access(search.root, os.W_OK)
        out = tmp_path / "rep"
        assert report.main([str(search.root), "--out", str(out)]) == 0
        assert "0.7700" in (out / "report.md").read_text()
        rows = read_search(search.root).rows
        assert [r.trial_id for r in rows] == [0, 1, 2] and rows[0].kind == "reference"
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
    assert _snapshot(search.root) == before
    assert not (search.root / "journal.jsonl.lock").exists()
