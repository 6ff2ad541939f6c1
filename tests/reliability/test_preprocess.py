"""`recsearch data preprocess` never loses a finished dataset: the new one is built beside the
output directory and swapped in only when complete; a killed run's leftovers are cleaned up (or
undone) by the next run, without --force."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recsearch import cli
from recsearch.data import layout
from recsearch.data.criteo import PreprocessOptions, preprocess

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--workers", "1", "--no-progress"]


def _tsv(path: Path, rows: int, seed: int, bad_line: int | None = None) -> Path:
    """Valid Criteo rows (label, 13 ints, 26 hex ids); line bad_line (1-based) gets I3 = 'x'."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        fields = [str(rng.integers(0, 2))] + [str(v) for v in rng.integers(0, 1000, 13)]
        fields += [f"{v:08x}" for v in rng.integers(0, 2**32, 26)]
        if i + 1 == bad_line:
            fields[3] = "x"
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    """A finished dataset (7 days) with the user's own files beside it."""
    out = tmp_path / "data"
    assert cli.main(["data", "preprocess", "--input", str(_tsv(tmp_path / "old.txt", 70, 0)),
                     "--out", str(out), *QUIET]) == 0
    (out / "stats.json").write_text('{"tables": []}\n')
    (out / "notes").mkdir()
    (out / "notes" / "README").write_text("mine\n")
    return out


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def test_force_with_a_malformed_row_keeps_the_old_dataset_byte_identical(tmp_path, dataset, capsys):
    before = _tree(dataset)
    bad = _tsv(tmp_path / "new.txt", 90, 1, bad_line=41)
    capsys.readouterr()
    code = cli.main(["data", "preprocess", "--input", str(bad), "--out", str(dataset), "--force", *QUIET])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recsearch data preprocess: {bad}, line 41: field I3: not an integer, got 'x'")
    assert _tree(dataset) == before
    assert _siblings(dataset) == ["data"]  # no work folder left


def test_force_with_good_input_replaces_the_dataset_and_keeps_the_users_files(tmp_path, dataset):
    new = _tsv(tmp_path / "new.txt", 90, 1)
    assert cli.main(["data", "preprocess", "--input", str(new), "--out", str(dataset), "--days", "3",
                     "--force", *QUIET]) == 0
    meta = layout.read_meta(dataset)
    assert meta.day_rows == (30, 30, 30) and meta.extra["inputs"] == [str(new)]
    days = {f"day_{d}_{k}.npy" for d in range(3) for k in ("dense", "sparse", "labels")}
    assert set(_tree(dataset)) == days | {"meta.json", "stats.json", "notes/README"}  # day_3..6 gone
    assert (dataset / "notes" / "README").read_text() == "mine\n"
    assert _siblings(dataset) == ["data"]


def test_without_force_a_finished_dataset_is_refused_before_reading(tmp_path, dataset, capsys):
    before = _tree(dataset)
    code = cli.main(["data", "preprocess", "--input", str(_tsv(tmp_path / "n.txt", 70, 1)),
                     "--out", str(dataset), *QUIET])
    assert code == 2
    assert capsys.readouterr().err == (
        f"recsearch data preprocess: {dataset} already holds a finished dataset; pass --force to replace it\n"
    )
    assert _tree(dataset) == before and _siblings(dataset) == ["data"]


# ---- killed runs ---------------------------------------------------------------------------------
KILLER = textwrap.dedent('''
    import os, signal, sys
    from recsearch.data import criteo, layout, output_dir

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    point = sys.argv[1]
    if point == "before_meta":  # after the final renames of the npy files, before meta.json
        layout.write_meta = die
    elif point == "between_renames":  # the old dataset moved aside, the new one not yet in place
        real_rename = os.rename
        def rename(src, dst):
            if ".incomplete-" in os.fspath(src):
                die()
            return real_rename(src, dst)
        os.rename = rename
    elif point == "carrying_over":  # the new dataset in place, the user's files not moved yet
        output_dir.carry_over = die
    sys.exit(criteo.main(sys.argv[2:]))
''')


def _killed(tmp_path: Path, point: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), point, *args, *QUIET], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    return done


def _work_folder(out: Path) -> Path:
    (work,) = [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.incomplete-")]
    return work


def test_killed_before_meta_json_the_next_run_cleans_up_without_force(tmp_path, capsys):
    out = tmp_path / "data"
    tsv = str(_tsv(tmp_path / "a.txt", 70, 0))
    _killed(tmp_path, "before_meta", "--input", tsv, "--out", str(out))
    assert not out.exists()  # nothing final-named in the output directory
    work = _work_folder(out)
    assert (work / "day_0_labels.npy").exists() and not (work / "meta.json").exists()
    # Readers call such a folder unfinished instead of reading it.
    assert cli.main(["data", "stats", str(work)]) == 2
    err = capsys.readouterr().err
    assert f"{work / 'meta.json'} not found: {work} is not a finished recsearch dataset. Without " \
           "meta.json a dataset is incomplete" in err
    # The next run needs no --force, and removes the dead run's folder.
    assert cli.main(["data", "preprocess", "--input", tsv, "--out", str(out), *QUIET]) == 0
    assert layout.read_meta(out).total_rows == 70 and _siblings(out) == ["data"]


def test_killed_before_meta_json_while_replacing_keeps_the_old_dataset(tmp_path, dataset, capsys):
    before = _tree(dataset)
    _killed(tmp_path, "before_meta", "--input", str(_tsv(tmp_path / "n.txt", 90, 1)),
            "--out", str(dataset), "--force")
    assert _tree(dataset) == before
    assert len(_siblings(dataset)) == 2  # data and its dead run's data.incomplete-<pid>
    assert cli.main(["data", "preprocess", "--input", str(tmp_path / "n.txt"), "--out", str(dataset), *QUIET]) == 2
    assert "already holds a finished dataset; pass --force" in capsys.readouterr().err
    assert _tree(dataset) == before and _siblings(dataset) == ["data"]


def test_killed_between_the_two_renames_the_old_dataset_is_moved_back(tmp_path, dataset, capsys):
    before = _tree(dataset)
    _killed(tmp_path, "between_renames", "--input", str(_tsv(tmp_path / "n.txt", 90, 1)),
            "--out", str(dataset), "--force")
    assert not dataset.exists()
    (old,) = [n for n in _siblings(dataset) if ".replaced-" in n]
    assert _tree(dataset.parent / old) == before  # whole, under a clear name
    capsys.readouterr()
    assert cli.main(["data", "preprocess", "--input", str(tmp_path / "n.txt"), "--out", str(dataset), *QUIET]) == 2
    err = capsys.readouterr().err
    assert f"{dataset} was missing and {old} held the dataset a killed run was replacing: moved it back" in err
    assert "already holds a finished dataset; pass --force" in err
    assert _tree(dataset) == before and _siblings(dataset) == ["data"]


def test_killed_while_moving_the_users_files_the_next_run_finishes(tmp_path, dataset):
    new = _tsv(tmp_path / "n.txt", 90, 1)
    _killed(tmp_path, "carrying_over", "--input", str(new), "--out", str(dataset), "--force")
    assert layout.read_meta(dataset).extra["inputs"] == [str(new)]  # the new dataset is in place
    assert not (dataset / "stats.json").exists()  # still in data.replaced-<pid>
    assert cli.main(["data", "preprocess", "--input", str(new), "--out", str(dataset), "--force", *QUIET]) == 0
    assert (dataset / "notes" / "README").read_text() == "mine\n" and (dataset / "stats.json").exists()
    assert _siblings(dataset) == ["data"]


def test_a_live_runs_folder_is_left_alone(tmp_path):
    out = tmp_path / "data"
    live = tmp_path / f"data.incomplete-{os.getppid()}"  # the process that started this test
    live.mkdir()
    preprocess([_tsv(tmp_path / "a.txt", 70, 0)], out, PreprocessOptions(workers=1, progress=False))
    assert live.is_dir() and layout.read_meta(out).total_rows == 70


def test_a_mount_point_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="^/proc is a mount point: a dataset is built beside"):
        preprocess([_tsv(tmp_path / "a.txt", 70, 0)], Path("/proc"), PreprocessOptions(workers=1, progress=False))
    assert not list(Path("/").glob("proc.incomplete-*"))
