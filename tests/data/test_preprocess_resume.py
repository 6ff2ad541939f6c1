"""`recsearch data preprocess` resumes a killed or interrupted run (recsearch.data.criteo,
"Resuming"): the resumed output is byte for byte an uninterrupted run's."""

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recsearch.data import criteo, layout, output_dir
from recsearch.data import preprocess_resume as resume
from recsearch.data.criteo import PreprocessError, PreprocessOptions, preprocess
from tests.conftest import KAGGLE_SAMPLE
from tests.procs import wait_until

REPO = Path(__file__).resolve().parents[2]
CHUNK = 20_000  # bytes: the 2,000-line input below is 25 chunks


def _opts(**kw):
    base = {"workers": 1, "progress": False, "chunk_bytes": CHUNK, "checkpoint_s": 0}
    return PreprocessOptions(**{**base, **kw})


@pytest.fixture
def big(tmp_path):
    """The 100-line Kaggle sample 20 times: 2,000 lines, about 480 kB."""
    path = tmp_path / "train.txt"
    path.write_text("\n".join([KAGGLE_SAMPLE.read_text()] * 20))
    return path


def _day_inputs(tmp_path, copies=(6, 4, 5)):
    """Terabyte-like inputs: day_0, day_1, ... of copies x 100 lines each."""
    sample = KAGGLE_SAMPLE.read_text()
    paths = []
    for i, n in enumerate(copies):
        path = tmp_path / f"day_{i}"
        path.write_text("\n".join([sample] * n) + "\n")
        paths.append(path)
    return paths


def _processes_with_open(path):
    """Pids of the processes that hold path open (Linux /proc)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _work_folders(out):
    return sorted(p.name for p in out.parent.glob(f"{out.name}{output_dir.WORK_TAG}*"))


def _assert_same_dataset(a, b):
    """Every file byte for byte, meta.json but its preprocess_s."""
    files_a = {p.name: p.read_bytes() for p in a.iterdir()}
    files_b = {p.name: p.read_bytes() for p in b.iterdir()}
    assert files_a.keys() == files_b.keys()
    meta_a, meta_b = (json.loads(f.pop(layout.META_FILE)) for f in (files_a, files_b))
    meta_a["extra"].pop("preprocess_s"), meta_b["extra"].pop("preprocess_s")
    assert meta_a == meta_b
    for name in files_a:
        assert files_a[name] == files_b[name], name


def _interrupt_after_checkpoint(monkeypatch, k):
    """Ctrl-C right after the k-th resume state is written (the parent's side: any workers)."""
    real = resume.write_state
    writes = []

    def write_then_interrupt(work, state):
        real(work, state)
        writes.append(state["progress"]["tasks_done"])
        if len(writes) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_state", write_then_interrupt)
    return writes


def _count_chunks(monkeypatch, fail_at=None):
    """Record _process_chunk's tasks (one worker: in this process); Ctrl-C once, at call fail_at."""
    real = criteo._process_chunk
    calls = []
    failed = []

    def counted(task):
        calls.append(task)
        if len(calls) == fail_at and not failed:
            failed.append(task)
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(criteo, "_process_chunk", counted)
    return calls


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_to_identical_bytes(big, tmp_path, monkeypatch, capsys, workers):
    reference = tmp_path / "reference"
    preprocess([big], reference, _opts(workers=workers))
    total = len(criteo._byte_ranges(big, CHUNK))
    assert total == 25

    out = tmp_path / "out"
    writes = _interrupt_after_checkpoint(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts(workers=workers))
    # The interrupt came before the run took note of the 9th state: it writes it once more.
    assert writes[:9] == list(range(1, 10)) and writes[9:] in ([], [9]) and not out.exists()
    assert _work_folders(out) == [f"out{output_dir.WORK_TAG}{os.getpid()}"]
    err = capsys.readouterr().err
    assert "interrupted" in err and "9 of 25 chunks (36%)" in err and "run the same command" in err
    state = json.loads((tmp_path / _work_folders(out)[0] / resume.RESUME_FILE).read_text())
    assert state["progress"]["tasks_done"] == 9 and sum(state["progress"]["day_rows"]) > 0

    monkeypatch.undo()
    preprocess([big], out, _opts(workers=workers))
    err = capsys.readouterr().err
    left = tmp_path / f"out{output_dir.WORK_TAG}{os.getpid()}"
    assert f"resuming {left}: 9 of 25 chunks (36%) already written" in err
    _assert_same_dataset(out, reference)
    assert _work_folders(out) == []


def test_resume_skips_the_chunks_done_and_continues_their_line_numbers(big, tmp_path, monkeypatch, capsys):
    """A Ctrl-C mid-chunk saves the progress of the chunks before it (more than the last
    checkpoint); the resumed run reads only the rest, and names lines by their place in the file."""
    rows = big.read_text().split("\n")
    rows[1500] = "2" + rows[1500][1:]  # line 1501: label 2
    big.write_text("\n".join(rows))
    bad = tmp_path / "bad.txt"
    shutil.copy(big, bad)
    reference = tmp_path / "reference"
    preprocess([big], reference, _opts(skip_bad_rows=True))

    out = tmp_path / "out"
    calls = _count_chunks(monkeypatch, fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts(skip_bad_rows=True, checkpoint_s=3600))
    assert len(calls) == 6
    assert "5 of 25 chunks" in capsys.readouterr().err  # saved when interrupted
    calls.clear()
    preprocess([big], out, _opts(skip_bad_rows=True, checkpoint_s=3600))
    assert "5 of 25 chunks (20%) already written" in capsys.readouterr().err
    assert len(calls) == 20 and calls[0].start_byte > 0
    _assert_same_dataset(out, reference)
    meta = layout.read_meta(out)
    assert meta.extra["bad_rows_skipped"] == 1
    assert meta.extra["bad_row_examples"] == [
        f"{big}, line 1501: field label: label must be 0 or 1, got '2'"
    ]

    # Without --skip-bad-rows the resumed run stops at the same line, and a bad row is an error:
    # nothing is kept for resuming.
    monkeypatch.undo()
    _count_chunks(monkeypatch, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        preprocess([bad], tmp_path / "b", _opts())
    with pytest.raises(PreprocessError, match=r"bad.txt, line 1501: field label"):
        preprocess([bad], tmp_path / "b", _opts())
    assert _work_folders(tmp_path / "b") == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killed_process_is_resumed(big, tmp_path, capsys, how):
    """A real process (2 workers) killed while it writes its 8th resume state: with SIGKILL the
    day files already hold the 8th chunk's rows, which the resumed run cuts off; SIGTERM stops it
    like Ctrl-C (exit status 143, the state saved)."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from recsearch.data import criteo, preprocess_resume
        real, writes = preprocess_resume.write_state, []
        def write(work, state):
            writes.append(1)
            if len(writes) == 8:
                if {how == "SIGKILL"}:
                    os.kill(os.getpid(), signal.SIGKILL)  # rows appended and synced, state not
                real(work, state)
                os.kill(os.getpid(), signal.SIGTERM)
            real(work, state)
        preprocess_resume.write_state = write
        sys.exit(criteo.main(["--input", {str(big)!r}, "--out", {str(out)!r}, "--workers", "2",
                              "--chunk-mb", "{CHUNK / (1 << 20)!r}", "--checkpoint-s", "0",
                              "--no-progress"]))
        """
    )
    with open(tmp_path / "stderr", "w") as err_file:
        child = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file,
            timeout=120,
        )
    child_err = (tmp_path / "stderr").read_text()
    # its workers and their forkserver (which inherited its stderr) end with it, SIGKILL included
    assert wait_until(lambda: not _processes_with_open(tmp_path / "stderr"), timeout_s=15), (
        f"left running: {_processes_with_open(tmp_path / 'stderr')}")
    if how == "SIGKILL":
        assert child.returncode == -signal.SIGKILL
        done = 7
    else:
        assert child.returncode == 143, child_err
        assert "run the same command again to resume" in child_err
        done = 8
    (left,) = _work_folders(out)
    assert not out.exists()
    if how == "SIGKILL":  # the 8th chunk's rows are in the files, beyond what the state counts
        progress = json.loads((out.parent / left / resume.RESUME_FILE).read_text())["progress"]
        sizes = {name: (out.parent / left / name).stat().st_size for name in progress["files"]}
        assert any(sizes[name] > size for name, size in progress["files"].items())

    preprocess([big], out, _opts(workers=2))
    assert f"resuming {out.parent / left}: {done} of 25 chunks" in capsys.readouterr().err
    preprocess([big], tmp_path / "reference", _opts(workers=2))
    _assert_same_dataset(out, tmp_path / "reference")
    assert _work_folders(out) == []


def test_terabyte_inputs_resume_mid_file(tmp_path, monkeypatch, capsys):
    days = _day_inputs(tmp_path)
    reference = tmp_path / "reference"
    preprocess(days, reference, _opts(hash_size=(1000,)))
    chunks = [len(criteo._byte_ranges(p, CHUNK)) for p in days]
    out = tmp_path / "out"
    calls = _count_chunks(monkeypatch, fail_at=chunks[0] + 3)  # 2 chunks into day_1
    with pytest.raises(KeyboardInterrupt):
        preprocess(days, out, _opts(hash_size=(1000,), checkpoint_s=3600))
    capsys.readouterr()
    calls.clear()
    preprocess(days, out, _opts(hash_size=(1000,), checkpoint_s=3600))
    assert f"{chunks[0] + 2} of {sum(chunks)} chunks" in capsys.readouterr().err
    assert len(calls) == sum(chunks) - chunks[0] - 2
    assert calls[0].path == days[1] and calls[0].start_byte > 0
    _assert_same_dataset(out, reference)


def test_changed_input_or_options_start_over_saying_why(big, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def interrupted_run(**kw):
        writes = _interrupt_after_checkpoint(monkeypatch, 5)
        with pytest.raises(KeyboardInterrupt):
            preprocess([big], out, _opts(**kw))
        monkeypatch.undo()
        assert writes and _work_folders(out)
        capsys.readouterr()

    interrupted_run()
    calls = _count_chunks(monkeypatch)
    preprocess([big], out, _opts(days=3))  # another --days: another split of the same rows
    err = capsys.readouterr().err
    assert "not resuming" in err and "--days was 7, now 3; deleted it" in err and "resuming" not in err.replace("not resuming", "")
    assert len(calls) == 25 and layout.read_meta(out).day_rows == (667, 667, 666)
    preprocess([big], tmp_path / "ref3", _opts(days=3))
    _assert_same_dataset(out, tmp_path / "ref3")
    monkeypatch.undo()

    shutil.rmtree(out)
    interrupted_run()
    stat = big.stat()
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: maybe changed
    calls = _count_chunks(monkeypatch)
    preprocess([big], out, _opts())
    err = capsys.readouterr().err
    assert f"input {big.resolve()} changed since" in err and "deleted it" in err
    assert len(calls) == 25 and _work_folders(out) == []
    monkeypatch.undo()

    shutil.rmtree(out)
    interrupted_run()
    preprocess([big], out, _opts(hash_size=(500,), chunk_bytes=CHUNK * 2))
    err = capsys.readouterr().err
    assert "--hash-size was None, now [500]" in err and "--chunk-mb (chunk bytes) was 20000, now 40000" in err

    shutil.rmtree(out)
    interrupted_run(workers=1)  # workers, progress, force and the checkpoint interval do not count
    preprocess([big], out, _opts(workers=2, checkpoint_s=5, force=True))
    assert "5 of 25 chunks (20%) already written" in capsys.readouterr().err


def test_restart_deletes_the_resumable_folder(big, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _interrupt_after_checkpoint(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts())
    monkeypatch.undo()
    capsys.readouterr()
    calls = _count_chunks(monkeypatch)
    assert criteo.main(["--input", str(big), "--out", str(out), "--workers", "1", "--no-progress",
                        "--chunk-mb", str(CHUNK / (1 << 20)), "--restart"]) == 0
    err = capsys.readouterr().err
    assert "--restart: deleting" in err and "5 of 25 chunks (20%) written by a killed run" in err
    assert len(calls) == 25 and _work_folders(out) == []
    preprocess([big], tmp_path / "reference", _opts())
    _assert_same_dataset(out, tmp_path / "reference")


def test_cli_interrupt_and_resume(big, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--input", str(big), "--out", str(out), "--workers", "1", "--no-progress",
            "--chunk-mb", str(CHUNK / (1 << 20)), "--checkpoint-s", "0", "--hash-size", "977"]
    _count_chunks(monkeypatch, fail_at=11)
    handler = signal.getsignal(signal.SIGTERM)
    assert criteo.main(args) == 130
    err = capsys.readouterr().err
    assert "keeps 10 of 25 chunks (40%)" in err and "run the same command again to resume" in err
    assert f"{out} was not changed" in err
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's SIGTERM handler is gone
    monkeypatch.undo()
    assert criteo.main(args) == 0
    printed = capsys.readouterr()
    assert "10 of 25 chunks (40%) already written" in printed.err
    assert f"wrote 2,000 rows in 7 days to {out}" in printed.out


def test_vocabulary_pass_is_not_repeated(big, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    preprocess([big], reference, _opts(vocab_threshold=3))
    out = tmp_path / "out"
    calls = _count_chunks(monkeypatch, fail_at=25 + 4)  # the counting pass, then 3 chunks of rows
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts(vocab_threshold=3, checkpoint_s=3600))
    assert sum(t.count_only for t in calls) == 25
    calls.clear()
    preprocess([big], out, _opts(vocab_threshold=3, checkpoint_s=3600))
    assert "3 of 25 chunks (12%) and the counted vocabularies already written" in capsys.readouterr().err
    assert not any(t.count_only for t in calls) and len(calls) == 22
    _assert_same_dataset(out, reference)

    # Killed right after the vocabularies were saved, before any row: only the row pass runs.
    shutil.rmtree(out)
    writes = _interrupt_after_checkpoint(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts(vocab_threshold=3, checkpoint_s=3600))
    assert writes == [0]
    monkeypatch.undo()
    calls = _count_chunks(monkeypatch)
    preprocess([big], out, _opts(vocab_threshold=3))
    assert "0 of 25 chunks (0%) and the counted vocabularies" in capsys.readouterr().err
    assert len(calls) == 25 and not any(t.count_only for t in calls)
    _assert_same_dataset(out, reference)

    # Interrupted while counting: nothing to resume, the folder is deleted as before.
    shutil.rmtree(out)
    _count_chunks(monkeypatch, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts(vocab_threshold=3))
    assert _work_folders(out) == []


def test_torchrec_dense_resumes_in_the_row_pass_and_in_the_transform(tmp_path, monkeypatch, capsys):
    days = _day_inputs(tmp_path)
    reference = tmp_path / "reference"
    preprocess(days, reference, _opts(dense_transform="torchrec"))
    out = tmp_path / "out"

    _interrupt_after_checkpoint(monkeypatch, 7)  # in the row pass
    with pytest.raises(KeyboardInterrupt):
        preprocess(days, out, _opts(dense_transform="torchrec"))
    monkeypatch.undo()
    preprocess(days, out, _opts(dense_transform="torchrec"))
    assert "7 of" in capsys.readouterr().err
    _assert_same_dataset(out, reference)

    # Interrupted in the transform: day_0 done, day_1 half written (its copy), day_2 not begun.
    shutil.rmtree(out)
    real = criteo._apply_torchrec_dense
    transformed = []

    def transform_then_die(path, file_min):
        if len(transformed) == 1:
            partial = layout.partial_path(path)
            partial.with_name(partial.name + ".torchrec").write_bytes(b"half a copy")
            raise KeyboardInterrupt
        real(path, file_min)
        transformed.append(path)

    monkeypatch.setattr(criteo, "_apply_torchrec_dense", transform_then_die)
    with pytest.raises(KeyboardInterrupt):
        preprocess(days, out, _opts(dense_transform="torchrec"))
    (left,) = _work_folders(out)
    dtypes = [np.load(tmp_path / left / f"day_{d}_dense.npy.partial", mmap_mode="r").dtype for d in range(3)]
    assert dtypes == [np.float32, np.int32, np.int32]
    monkeypatch.undo()
    calls = _count_chunks(monkeypatch)
    preprocess(days, out, _opts(dense_transform="torchrec"))
    assert "already written" in capsys.readouterr().err and calls == []  # all chunks were done
    _assert_same_dataset(out, reference)


def test_data_errors_delete_machine_errors_keep_and_live_folders_are_left_alone(big, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    # An error of the data after checkpoints (a bad row, line 1501) is not resumable: deleted.
    rows = big.read_text().split("\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(rows[:1500] + ["2" + rows[1500][1:]] + rows[1501:]))
    with pytest.raises(criteo.PreprocessError, match="line 1501"):
        preprocess([bad], tmp_path / "bad_out", _opts())
    assert _work_folders(tmp_path / "bad_out") == []
    # The machine's error (disk full in the dense transform, after the row pass) keeps the
    # folder, and the rerun transforms what is left: the bytes of an uninterrupted run.
    reference = tmp_path / "reference"
    preprocess([big], reference, _opts(dense_transform="torchrec"))

    def disk_full(path, file_min):
        raise OSError("No space left on device")

    monkeypatch.setattr(criteo, "_apply_torchrec_dense", disk_full)
    with pytest.raises(OSError, match="No space"):
        preprocess([big], out, _opts(dense_transform="torchrec"))
    assert len(_work_folders(out)) == 1 and "fix that, then run the same command" in capsys.readouterr().err
    monkeypatch.undo()
    preprocess([big], out, _opts(dense_transform="torchrec"))
    assert "25 of 25 chunks (100%) already written" in capsys.readouterr().err
    _assert_same_dataset(out, reference)
    shutil.rmtree(out)

    # A resumable folder of a process that is alive (a concurrent run) is not touched.
    live = tmp_path / f"out{output_dir.WORK_TAG}{os.getppid()}"
    live.mkdir()
    (live / resume.RESUME_FILE).write_text("{}")
    preprocess([big], out, _opts())
    assert live.is_dir() and (live / resume.RESUME_FILE).read_text() == "{}"
    assert "resuming" not in capsys.readouterr().err
    shutil.rmtree(live)

    # A dead process's folder whose files are shorter than its state records starts over.
    writes = _interrupt_after_checkpoint(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], tmp_path / "t", _opts())
    monkeypatch.undo()
    assert writes
    (left,) = _work_folders(tmp_path / "t")
    with open(tmp_path / left / "day_0_sparse.npy.partial", "r+b") as fh:
        fh.truncate(200)
    preprocess([big], tmp_path / "t", _opts())
    assert "day_0_sparse.npy.partial is missing or shorter than its resume state records" in capsys.readouterr().err
    _assert_same_dataset(tmp_path / "t", out)


def test_npy_append_writer_reopens_at_a_row_count(tmp_path):
    path = tmp_path / "a.npy"
    data = np.arange(30, dtype=np.int64).reshape(10, 3)
    writer = layout.NpyAppendWriter(path, np.int64, (3,))
    writer.append(data[:7])
    writer.sync()
    assert writer.nbytes == 128 + 7 * 24
    writer.close()  # header says 7 rows; a killed writer's might say 0: either is fine
    with pytest.raises(ValueError, match="fewer than 8 rows"):
        layout.NpyAppendWriter.reopen(path, np.int64, (3,), 8)
    with pytest.raises(ValueError, match="not a int32 npy file"):
        layout.NpyAppendWriter.reopen(path, np.int32, (3,), 4)
    with pytest.raises(ValueError, match="not a int64 npy file of rows \\(2,\\)"):
        layout.NpyAppendWriter.reopen(path, np.int64, (2,), 4)
    writer = layout.NpyAppendWriter.reopen(path, np.int64, (3,), 4)  # rows 4..6 cut off
    writer.append(data[4:])
    writer.close()
    layout.commit_partials([path])
    np.testing.assert_array_equal(np.load(path), data)


def test_every_option_is_in_the_fingerprint_or_said_not_to_change_the_output(big, tmp_path):
    fields = {f.name for f in dataclasses.fields(PreprocessOptions)}
    assert fields == resume.OUTPUT_OPTIONS.keys() | resume.OTHER_OPTIONS
    assert not resume.OUTPUT_OPTIONS.keys() & resume.OTHER_OPTIONS
    preprocess([big], tmp_path / "vocab", _opts(vocab_threshold=2))
    base = resume.fingerprint([big], _opts())
    changed = {
        "days": 3, "dense_transform": "torchrec", "hash_size": (500,), "vocab_threshold": 2,
        "vocab_from": tmp_path / "vocab", "skip_bad_rows": True, "chunk_bytes": CHUNK * 2,
    }
    assert changed.keys() == resume.OUTPUT_OPTIONS.keys()
    for name, value in changed.items():
        differences = resume.fingerprint_differences(resume.fingerprint([big], _opts(**{name: value})), base)
        assert len(differences) == 1 and resume.OUTPUT_OPTIONS[name] in differences[0], name
    others = {"workers": 3, "force": True, "progress": True, "checkpoint_s": 7.0, "restart": True}
    assert others.keys() == resume.OTHER_OPTIONS
    assert resume.fingerprint([big], _opts(**others)) == base
    # A key without words of its own (a later version's) still counts.
    assert resume.fingerprint_differences({**base, "new_option": 1}, base) == [
        "new_option was 1, now None"
    ]


DEAD_PID = 999_999_999  # beyond any pid_max: no such process


def _dead_runs_folder(big, out, monkeypatch, name_tail=""):
    """An interrupted run's work folder (5 chunks done), named after a dead process."""
    writes = _interrupt_after_checkpoint(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        preprocess([big], out, _opts())
    monkeypatch.undo()
    assert writes
    own = out.parent / f"{out.name}{output_dir.WORK_TAG}{os.getpid()}"
    dead = own.with_name(f"{out.name}{output_dir.WORK_TAG}{DEAD_PID}{name_tail}")
    os.rename(own, dead)
    return dead


def test_a_dead_runs_folder_is_taken_by_a_rename_before_it_is_deleted(big, tmp_path, monkeypatch, capsys):
    """A run that deletes a folder it cannot resume first renames it to a name of its own, so a
    concurrent run that takes the same folder over to resume it (a rename too) gets it whole or
    not at all, never while it is being deleted."""
    out = tmp_path / "out"
    dead = _dead_runs_folder(big, out, monkeypatch)
    capsys.readouterr()
    deleting = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path).parent == tmp_path:
            deleting.append((Path(path).name, dead.exists(), (Path(path) / resume.RESUME_FILE).exists()))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    preprocess([big], out, _opts(days=3))  # other options: not resumed, deleted
    monkeypatch.undo()
    assert "--days was 7, now 3; deleted it" in capsys.readouterr().err
    discard = f"out{output_dir.WORK_TAG}{os.getpid()}{output_dir.DISCARD_TAG}"
    # deleted under this process's name, the resume state first; the original name was gone
    assert (discard, False, False) in deleting
    assert _work_folders(out) == [] and layout.read_meta(out).day_rows == (667, 667, 666)


def test_a_folder_left_half_deleted_is_deleted_never_resumed(big, tmp_path, monkeypatch, capsys):
    """A run killed while deleting a dead run's folder (`.discard`, its resume state maybe still
    there) leaves nothing the next run could resume."""
    out = tmp_path / "out"
    dead = _dead_runs_folder(big, out, monkeypatch, name_tail=output_dir.DISCARD_TAG)
    assert (dead / resume.RESUME_FILE).is_file()
    capsys.readouterr()
    calls = _count_chunks(monkeypatch)
    preprocess([big], out, _opts())
    assert "resuming" not in capsys.readouterr().err and len(calls) == 25
    assert not dead.exists() and _work_folders(out) == []
    preprocess([big], tmp_path / "reference", _opts())
    _assert_same_dataset(out, tmp_path / "reference")


def test_a_full_disk_keeps_the_folder_and_the_rerun_resumes(big, tmp_path, monkeypatch, capsys):
    """An OSError of the machine (ENOSPC in a day file's append, after 12 chunks) is not the
    data's fault: the progress saved stays, the message says to fix it and rerun, and the rerun
    resumes to the bytes of an uninterrupted run (the half-written block is cut off)."""
    reference = tmp_path / "reference"
    preprocess([big], reference, _opts())
    real_append, real_write_state = layout.NpyAppendWriter.append, resume.write_state
    states, appends = [], []

    def write_state(work, state):
        real_write_state(work, state)
        states.append(state["progress"]["tasks_done"])

    def append_until_full(self, block):
        if states and states[-1] == 12:  # the 13th chunk: its sparse block, after its dense one
            appends.append(len(block))
            if len(appends) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, block)

    monkeypatch.setattr(resume, "write_state", write_state)
    monkeypatch.setattr(layout.NpyAppendWriter, "append", append_until_full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        preprocess([big], out, _opts())
    err = capsys.readouterr().err
    assert "failed ([Errno 28] No space left on device)" in err and "12 of 25 chunks (48%)" in err
    assert "fix that, then run the same command again to resume" in err
    monkeypatch.undo()
    preprocess([big], out, _opts())
    assert "12 of 25 chunks (48%) already written" in capsys.readouterr().err
    _assert_same_dataset(out, reference)
