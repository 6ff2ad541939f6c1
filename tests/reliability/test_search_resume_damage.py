"""--resume of a damaged search directory: a clear error naming the file (and the journal's line),
exit 2, nothing rewritten; a torn last journal line (a kill mid-write) is still dropped and the
search resumes; an empty or foreign directory is refused instead of starting over on top of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from recsearch.search import loop, report
from recsearch.search.store import JournalStore
from tests.reliability.search_helpers import start_search, tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, learnable_data) -> Path:
    """A finished tiny search (2 candidates, halving over 2 rungs): journal, controller.pt, trials/."""
    root = tmp_path_factory.mktemp("finished")
    raw = tiny_config(learnable_data, **{"fidelity.train_rows": [2048, 6144], "fidelity.eta": 2, "trials": 2})
    search, out = start_search(root, raw)
    assert search.run() == 0
    return out


@pytest.fixture
def search_dir(tmp_path, finished) -> Path:
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    return out


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "search.lock"}


def _resume(d: Path, capsys) -> tuple[int, str]:
    code = loop.main(["--resume", str(d)])
    captured = capsys.readouterr()
    return code, captured.err


def _lines(d: Path) -> list[str]:
    return (d / "journal.jsonl").read_text().splitlines(keepends=True)


def _refused(d: Path, capsys, *expected: str) -> str:
    before = _snapshot(d)
    code, err = _resume(d, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    assert _snapshot(d) == before  # nothing written, nothing restarted
    return err


def test_an_intact_finished_search_resumes_to_exit_0(search_dir, capsys):
    code, err = _resume(search_dir, capsys)
    assert code == 0, err


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_garbage_journal_line_names_the_file_and_line(search_dir, capsys, where):
    lines = _lines(search_dir)
    at = 3 if where == "middle" else len(lines)
    lines.insert(at, "this is not json\n")
    (search_dir / "journal.jsonl").write_text("".join(lines))
    journal = search_dir / "journal.jsonl"
    _refused(search_dir, capsys, f"{journal}: line {at + 1}: not a JSON line")
    # `recsearch report` reads the same journal and says the same
    assert report.main([str(search_dir)]) == 2
    assert f"{journal}: line {at + 1}" in capsys.readouterr().err


@pytest.mark.parametrize("entry, message", [
    ({"op": "state", "trial_id": 42, "state": "COMPLETE", "time_s": 1.0}, "state for unknown trial 42"),
    ({"op": "state", "trial_id": 0, "state": "EXPLODED", "time_s": 1.0}, "unknown trial state 'EXPLODED'"),
    ({"op": "rename", "trial_id": 0, "time_s": 1.0}, "unknown journal op 'rename'"),
    ({"op": "state", "trial_id": "zero", "state": "COMPLETE", "time_s": 1.0}, "trial_id must be a non-negative integer"),
    ({"op": "create", "trial_id": 0, "spec": {}, "time_s": 1.0}, "trial 0 is created a second time"),
    ({"op": "state", "trial_id": 0, "state": "COMPLETE", "result": {"auc": 0.7}, "time_s": 1.0}, "invalid trial result"),
    ([1, 2, 3], "expected a JSON object, got list"),
])
def test_a_well_formed_but_wrong_journal_line_names_the_file_and_line(search_dir, capsys, entry, message):
    lines = _lines(search_dir)
    lines.insert(4, json.dumps(entry) + "\n")
    (search_dir / "journal.jsonl").write_text("".join(lines))
    _refused(search_dir, capsys, f"{search_dir / 'journal.jsonl'}: line 5: ", message)


def test_a_torn_last_line_from_a_kill_is_dropped_and_the_search_resumes(search_dir, capsys):
    journal = search_dir / "journal.jsonl"
    intact = journal.read_bytes()
    with open(journal, "ab") as fh:
        fh.write(b'{"op": "state", "trial_id": 1, "sta')  # killed mid-write: no newline
    records = JournalStore(search_dir).trials()
    resolved = yaml.safe_load((search_dir / "search.yaml").read_text())
    resolved["trials"] = 3  # one more candidate, so the resumed search appends to the journal
    (search_dir / "search.yaml").write_text(yaml.safe_dump(resolved))
    code, err = _resume(search_dir, capsys)
    assert code == 0, err
    after = journal.read_bytes()
    assert after.startswith(intact) and b'"sta{' not in after and b'"sta\n' not in after
    assert all(json.loads(line) for line in after.decode().splitlines())  # every line whole again
    now = JournalStore(search_dir).trials()
    assert [r.result for r in now[: len(records)]] == [r.result for r in records] and len(now) == 3


def test_a_corrupt_controller_state_is_a_clear_error(search_dir, capsys):
    path = search_dir / "controller.pt"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    _refused(search_dir, capsys, f"{path}: not a controller state file")


def test_another_controllers_state_is_a_clear_error(search_dir, capsys):
    path = search_dir / "controller.pt"
    torch.save({"net": {}, "updates": 3}, path)  # loads with weights_only, fits no RandomController
    _refused(search_dir, capsys, f"{path}: does not fit this search's RandomController and space")


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_controller_state_is_loaded_with_weights_only(search_dir, capsys):
    marker = search_dir.parent / "code_ran"
    torch.save({"rng": _Payload(marker)}, search_dir / "controller.pt")
    _refused(search_dir, capsys, "controller.pt: not a controller state file")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_a_lost_journal_beside_old_trials_is_refused_not_restarted(search_dir, capsys, how):
    journal = search_dir / "journal.jsonl"
    if how == "empty":
        journal.write_bytes(b"")
    else:
        journal.unlink()
    _refused(search_dir, capsys, f"{journal}: {how}, but {search_dir} holds trials and controller.pt")
    assert not (search_dir / "journal.jsonl").exists() or journal.read_bytes() == b""


def test_a_search_killed_before_its_first_trial_starts_afresh(search_dir, capsys):
    """search.yaml written, nothing else yet: resuming is starting; that is not a lost journal."""
    for p in search_dir.iterdir():
        if p.name != "search.yaml":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    code, err = _resume(search_dir, capsys)
    assert code == 0, err
    assert len(JournalStore(search_dir).trials()) == 2


def test_a_directory_that_is_not_a_search_is_refused(tmp_path, learnable_data, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(empty, capsys, f"{empty}: no search.yaml: not a search directory")
    # a user's search config where a resolved one should be (e.g. --resume configs/search)
    foreign = tmp_path / "configs"
    foreign.mkdir()
    raw = tiny_config(learnable_data, train=str(tmp_path / "train.yaml"))
    (foreign / "search.yaml").write_text(yaml.safe_dump(raw))
    _refused(foreign, capsys, f"{foreign / 'search.yaml'}: not a search directory's resolved config")
    assert sorted(p.name for p in foreign.iterdir()) == ["search.yaml"]
    missing = tmp_path / "nowhere"
    code, err = _resume(missing, capsys)
    assert code == 2 and f"{missing}: no such directory" in err and not missing.exists()
