import gzip
import json
import math
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from torchrec.datasets.criteo import BinaryCriteoUtils

from recsearch.data import criteo, layout, output_dir, preprocess_resume
from recsearch.data.criteo import PreprocessError, PreprocessOptions, preprocess
from tests.conftest import KAGGLE_SAMPLE

QUIET = {"workers": 1, "progress": False}


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "train.txt"
    shutil.copy(KAGGLE_SAMPLE, path)
    return path


def _rows(path):
    """The file's rows as lists of fields (the sample has no final newline)."""
    return [line.split("\t") for line in path.read_text().split("\n")]


def _write_rows(path, rows):
    path.write_text("\n".join("\t".join(fields) for fields in rows))


def _all(root, kind, days):
    return np.concatenate([np.load(layout.day_file(root, d, kind)) for d in range(days)])


def test_known_values_of_real_rows(sample, tmp_path):
    out = tmp_path / "out"
    meta = preprocess([sample], out, PreprocessOptions(**QUIET))
    assert meta == layout.read_meta(out)
    assert meta.day_rows == (15, 15, 14, 14, 14, 14, 14)  # dlrm's Kaggle split: divmod(100, 7)
    assert meta.source == "criteo_kaggle" and meta.dense_transform == "log1p"
    assert layout.split_rows(meta, "train") == 86 and layout.split_rows(meta, "val") == 7
    dense, sparse, labels = (_all(out, k, 7) for k in ("dense", "sparse", "labels"))
    assert dense.dtype == np.float32 and dense.shape == (100, 13)
    assert labels.dtype == np.int32 and labels.shape == (100, 1) and labels.sum() == 29
    assert sparse.dtype == np.int64 and meta.sparse_dtype == "int64"
    # Line 2: "1 0 559 2 7 2532 164 98 6 943 0 18 0 7 68fd1e64 bc478804 ..."
    assert labels[1, 0] == 1
    expected = np.log1p(np.array([0, 559, 2, 7, 2532, 164, 98, 6, 943, 0, 18, 0, 7])).astype(
        np.float32
    )
    np.testing.assert_array_equal(dense[1], expected)
    assert sparse[1, 0] == 0x68FD1E64 and sparse[1, 1] == 0xBC478804
    assert np.load(layout.day_file(out, 1, "sparse"))[0, 0] == int(
        _rows(sample)[15][14], 16
    )  # line 16
    rows = _rows(sample)
    assert dense[0, 0] == 0.0 and rows[0][1] == ""  # I1 missing -> 0
    assert dense[0, 4] == np.float32(math.log1p(13275))
    negative = [
        (i, j) for i, r in enumerate(rows) for j, v in enumerate(r[1:14]) if v.startswith("-")
    ]
    assert negative and all(dense[i, j] == 0.0 for i, j in negative)  # log1p(max(x, 0))
    missing = [(i, t) for i, r in enumerate(rows) for t, v in enumerate(r[14:]) if v == ""]
    assert missing and all(sparse[i, t] == 0 for i, t in missing)
    assert meta.num_embeddings_per_feature == tuple(int(x) + 1 for x in sparse.max(axis=0))
    assert meta.extra["categorical"] == "raw" and meta.extra["bad_rows_skipped"] == 0


def test_short_and_uppercase_hex_ids(sample, tmp_path):
    rows = _rows(sample)
    rows[0][14], rows[0][15], rows[0][16] = "abc", "ABCDEF01", "0"  # int(x, 16) accepts all three
    _write_rows(sample, rows)
    preprocess([sample], tmp_path / "o", PreprocessOptions(**QUIET))
    sparse = np.load(layout.day_file(tmp_path / "o", 0, "sparse"))
    assert list(sparse[0, :4]) == [0xABC, 0xABCDEF01, 0, int(rows[0][17], 16)]


@pytest.mark.parametrize("workers, chunk_bytes", [(1, 32 << 20), (2, 3000)])
def test_torchrec_transform_equals_torchrec_tsv_to_npys(sample, tmp_path, workers, chunk_bytes):
    ref = tmp_path / "ref"
    ref.mkdir()
    BinaryCriteoUtils.tsv_to_npys(
        str(sample),
        str(ref / "d.npy"),
        str(ref / "s.npy"),
        str(ref / "l.npy"),
        dataset_name="criteo_1tb",
    )
    ours = tmp_path / "ours"
    options = PreprocessOptions(
        dense_transform="torchrec", workers=workers, chunk_bytes=chunk_bytes, progress=False
    )
    meta = preprocess([sample], ours, options)
    dense = _all(ours, "dense", 7)
    assert dense.dtype == np.float32 and meta.dense_transform == "torchrec"
    np.testing.assert_array_equal(dense, np.load(ref / "d.npy"))
    np.testing.assert_array_equal(_all(ours, "sparse", 7), np.load(ref / "s.npy"))
    np.testing.assert_array_equal(_all(ours, "labels", 7), np.load(ref / "l.npy"))
    # By hand: the file's minimum (missing counts as 0) is -1, so x -> log(x + 3).
    raw = [int(v or 0) for r in _rows(sample) for v in r[1:14]]
    assert min(raw) == -1 == meta.extra["torchrec_dense_min"][0]
    assert dense[1, 1] == np.log(np.float32(559 + 3)) and dense[0, 0] == np.log(np.float32(3))


def test_hash_mode(sample, tmp_path):
    rows = _rows(sample)
    meta = preprocess([sample], tmp_path / "h", PreprocessOptions(hash_size=(1000,), **QUIET))
    sparse = _all(tmp_path / "h", "sparse", 7)
    assert meta.num_embeddings_per_feature == (1000,) * 26
    assert sparse.dtype == np.int32 and meta.sparse_dtype == "int32"
    assert sparse[0, 0] == 1 + 0x05DB9164 % 999  # 1 + value mod (N - 1)
    missing = np.array([[v == "" for v in r[14:]] for r in rows])
    assert (sparse[missing] == 0).all() and (sparse[~missing] >= 1).all() and sparse.max() < 1000

    sizes = tuple(range(10, 36))
    meta = preprocess([sample], tmp_path / "h26", PreprocessOptions(hash_size=sizes, **QUIET))
    sparse = _all(tmp_path / "h26", "sparse", 7)
    assert meta.num_embeddings_per_feature == sizes
    assert sparse[1, 25] == 1 + int(rows[1][39], 16) % 34 and (sparse < np.array(sizes)).all()

    # ids that may reach 2^31 no longer fit int32
    meta = preprocess(
        [sample], tmp_path / "big", PreprocessOptions(hash_size=(2**31 + 1,), **QUIET)
    )
    sparse = _all(tmp_path / "big", "sparse", 7)
    assert sparse.dtype == np.int64 and meta.sparse_dtype == "int64"
    assert sparse[1, 0] == 1 + 0x68FD1E64 % 2**31


def test_vocabulary_mode_and_reuse_for_another_file(sample, tmp_path):
    rows = _rows(sample)
    out = tmp_path / "v"
    options = PreprocessOptions(vocab_threshold=3, workers=2, chunk_bytes=3000, progress=False)
    meta = preprocess([sample], out, options)  # counts merged over 8 byte ranges
    sparse = _all(out, "sparse", 7)
    assert sparse.dtype == np.int32 and meta.extra["categorical"] == "vocab"
    for t in (0, 5, 25):
        raw = [int(r[14 + t], 16) for r in rows if r[14 + t]]
        frequent = sorted(v for v in set(raw) if raw.count(v) >= 3)
        vocab = np.load(out / f"vocab_{t}.npy")
        assert vocab.dtype == np.uint32 and list(vocab) == frequent
        assert meta.num_embeddings_per_feature[t] == len(frequent) + 1
        for i, r in enumerate(rows):
            value = int(r[14 + t], 16) if r[14 + t] else None
            expected = frequent.index(value) + 1 if value in frequent else 0  # rare, missing -> 0
            assert sparse[i, t] == expected
    assert not list(out.glob("*.partial"))

    # A held-out file (here: the last 40 rows, hex ids kept) mapped with the same vocabularies.
    held_out = tmp_path / "held_out.txt"
    _write_rows(held_out, rows[60:])
    meta2 = preprocess(
        [held_out], tmp_path / "v2", PreprocessOptions(vocab_from=out, days=2, **QUIET)
    )
    np.testing.assert_array_equal(_all(tmp_path / "v2", "sparse", 2), sparse[60:])
    assert meta2.num_embeddings_per_feature == meta.num_embeddings_per_feature
    np.testing.assert_array_equal(
        np.load(tmp_path / "v2" / "vocab_3.npy"), np.load(out / "vocab_3.npy")
    )
    with pytest.raises(FileNotFoundError, match="--vocab-threshold"):
        preprocess(
            [held_out], tmp_path / "v3", PreprocessOptions(vocab_from=tmp_path / "h", **QUIET)
        )


def test_value_counter_merges_lazily_and_exactly():
    rng = np.random.default_rng(0)
    counter = criteo._ValueCounter(min_merge_values=50)
    seen = []
    for _ in range(40):
        values, counts = np.unique(rng.integers(0, 300, 30).astype(np.uint32), return_counts=True)
        counter.add(values, counts)
        seen.append(np.repeat(values, counts))
    assert len(counter.values) > 0 and counter._pending  # merged on the way, some still waiting
    counter.merge()
    expected_values, expected_counts = np.unique(np.concatenate(seen), return_counts=True)
    np.testing.assert_array_equal(counter.values, expected_values)
    np.testing.assert_array_equal(counter.counts, expected_counts)
    assert counter.values.dtype == np.uint32 and counter.counts.dtype == np.int64


def _edit(index, value):
    return lambda fields: fields[:index] + [value] + fields[index + 1 :]


@pytest.mark.parametrize(
    "line_no, edit, message",
    [
        (5, lambda f: f[:30], "expected 40 tab-separated fields, found 30"),
        (6, lambda f: f + ["x"], "expected 40 tab-separated fields, found 41"),
        (7, _edit(20, "zz12ab34"), "field C7: not a hex id of at most 8 digits, got 'zz12ab34'"),
        (8, _edit(14, "123456789"), "field C1: not a hex id of at most 8 digits, got '123456789'"),
        (9, _edit(3, "4.5"), "field I3: not an integer, got '4.5'"),
        # Arrow's int64 cast takes these; the rule -?[0-9]{1,18} does not, whatever the other rows of
        # the chunk are (every other row here is valid, so the cast alone would not fail).
        (10, _edit(2, "0x10"), "field I2: not an integer, got '0x10'"),
        (12, _edit(4, "1234567890123456789"), "field I4: not an integer, got '1234567890123456789'"),
        (13, _edit(6, "+5"), "field I6: not an integer, got '+5'"),
        (2, _edit(0, "2"), "field label: label must be 0 or 1, got '2'"),
        (3, _edit(0, ""), "field label: label must be 0 or 1, got ''"),
        (11, lambda f: [""], "empty line (expected 40 tab-separated fields)"),
    ],
)
def test_bad_rows_name_file_line_and_field(sample, tmp_path, line_no, edit, message):
    rows = _rows(sample)
    rows[line_no - 1] = edit(rows[line_no - 1])
    _write_rows(sample, rows)
    out = tmp_path / "o"
    with pytest.raises(PreprocessError) as err:
        preprocess([sample], out, PreprocessOptions(chunk_bytes=2000, **QUIET))
    assert f"{sample}, line {line_no}: {message}" in str(err.value)
    assert "--skip-bad-rows" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("o.*"))  # nothing left, not even partials

    meta = preprocess([sample], tmp_path / "s", PreprocessOptions(skip_bad_rows=True, **QUIET))
    assert meta.total_rows == 99 and meta.extra["bad_rows_skipped"] == 1
    assert meta.extra["bad_row_examples"] == [f"{sample}, line {line_no}: {message}"]
    # Days are cut by line: the bad line's day (lines 1-15 -> day 0) is the one a row shorter.
    assert meta.day_rows == (14, 15, 14, 14, 14, 14, 14)


def test_binary_junk_and_int32_overflow_are_row_errors(sample, tmp_path):
    raw = sample.read_bytes().split(b"\n")
    fields = raw[3].split(b"\t")
    fields[14] = b"05db\xff164"  # not UTF-8: must be a row error, not a parser crash
    raw[3] = b"\t".join(fields)
    sample.write_bytes(b"\n".join(raw))
    with pytest.raises(
        PreprocessError, match=r"line 4: field C1: not a hex id .*got '05db\\\\xff164'"
    ):
        preprocess([sample], tmp_path / "a", PreprocessOptions(**QUIET))

    rows = [line.split("\t") for line in KAGGLE_SAMPLE.read_text().split("\n")]
    rows[1][5] = "99999999999"  # fits int64 (log1p is fine) but not TorchRec's int32
    _write_rows(sample, rows)
    assert preprocess([sample], tmp_path / "b", PreprocessOptions(**QUIET)).total_rows == 100
    with pytest.raises(PreprocessError, match="line 2: field I5: out of int32 range"):
        preprocess([sample], tmp_path / "c", PreprocessOptions(dense_transform="torchrec", **QUIET))


def test_line_numbers_across_byte_ranges_workers_and_files(sample, tmp_path):
    rows = _rows(sample)
    rows[86][20] = "nothex!!"
    _write_rows(sample, rows)
    options = PreprocessOptions(workers=2, chunk_bytes=2000, progress=False)
    with pytest.raises(PreprocessError, match=f"{sample}, line 87: field C7"):
        preprocess([sample], tmp_path / "o", options)
    days = [tmp_path / "day_0", tmp_path / "day_1"]
    _write_rows(days[0], rows[:50])
    _write_rows(days[1], rows[50:])  # the bad row is line 37 of day_1
    with pytest.raises(PreprocessError, match=f"{days[1]}, line 37: field C7"):
        preprocess(days, tmp_path / "tb", options)


def test_crlf_line_ends_equal_lf_and_a_stray_cr_is_refused(sample, tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(sample.read_bytes().replace(b"\n", b"\r\n"))
    preprocess([sample], tmp_path / "lf", PreprocessOptions(**QUIET))
    preprocess([crlf], tmp_path / "cr", PreprocessOptions(**QUIET))
    for kind in ("dense", "sparse", "labels"):
        np.testing.assert_array_equal(
            _all(tmp_path / "lf", kind, 7), _all(tmp_path / "cr", kind, 7)
        )
    rows = _rows(sample)
    rows[4][20] += "\r"
    _write_rows(sample, rows)
    with pytest.raises(PreprocessError, match=r"line 5: carriage return") as err:
        preprocess([sample], tmp_path / "x", PreprocessOptions(skip_bad_rows=True, **QUIET))
    assert "--skip-bad-rows" not in str(err.value)  # skipping cannot help here


def test_parallel_output_is_byte_identical(sample, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join([sample.read_text()] * 200))  # 20,000 lines, 4.8 MB
    one = preprocess(
        [big], tmp_path / "one", PreprocessOptions(workers=1, chunk_bytes=300_000, progress=False)
    )
    two = preprocess(
        [big], tmp_path / "two", PreprocessOptions(workers=2, chunk_bytes=300_000, progress=False)
    )
    assert one.day_rows == two.day_rows and one.total_rows == 20_000
    assert one.num_embeddings_per_feature == two.num_embeddings_per_feature
    for kind in ("dense", "sparse", "labels"):
        for d in range(7):
            a, b = (
                layout.day_file(tmp_path / "one", d, kind),
                layout.day_file(tmp_path / "two", d, kind),
            )
            assert a.read_bytes() == b.read_bytes()


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_interrupted_run_keeps_the_old_dataset(sample, tmp_path, monkeypatch):
    out = tmp_path / "out"
    preprocess([sample], out, PreprocessOptions(**QUIET))  # a finished dataset, to be replaced
    before = _tree(out)
    real = criteo._process_chunk
    calls = []

    def interrupted_on_third_range(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(criteo, "_process_chunk", interrupted_on_third_range)
    with pytest.raises(KeyboardInterrupt):
        preprocess([sample], out, PreprocessOptions(chunk_bytes=2000, force=True, **QUIET))
    assert len(calls) == 3 and _tree(out) == before
    # The work folder stays, for a rerun to resume (tests/data/test_preprocess_resume.py); the
    # next run here has other options, so it deletes it.
    work = f"out{output_dir.WORK_TAG}{os.getpid()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", work, "train.txt"]
    assert (tmp_path / work / preprocess_resume.RESUME_FILE).is_file()
    monkeypatch.setattr(criteo, "_process_chunk", real)

    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(layout, "write_meta", disk_full)  # fails after the npy files are committed
    with pytest.raises(OSError, match="No space"):
        preprocess([sample], out, PreprocessOptions(vocab_threshold=2, force=True, **QUIET))
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.txt"]
    with pytest.raises(OSError, match="No space"):
        preprocess([sample], tmp_path / "new", PreprocessOptions(**QUIET))
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="not a finished recsearch dataset"):
        layout.read_meta(tmp_path / "new")


def test_output_directory_rules(sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "day_0_dense.npy.partial").write_bytes(b"left by a killed run")
    preprocess([sample], out, PreprocessOptions(**QUIET))  # stale partials need no --force
    assert not list(out.glob("*.partial")) and (out / "notes.txt").exists()
    with pytest.raises(FileExistsError, match="finished dataset; pass --force"):
        preprocess([sample], out, PreprocessOptions(**QUIET))
    (out / "day_9_sparse.npy").write_bytes(b"from an older, longer run")
    meta = preprocess([sample], out, PreprocessOptions(days=3, force=True, **QUIET))
    assert meta.day_rows == (34, 33, 33)
    expected = {f"day_{d}_{kind}.npy" for d in range(3) for kind in ("dense", "sparse", "labels")}
    assert {p.name for p in out.iterdir()} == expected | {
        "meta.json",
        "notes.txt",
    }  # day_3.., day_9 gone

    torchrec_dir = tmp_path / "torchrec"  # TorchRec's own output: day files, no meta.json
    torchrec_dir.mkdir()
    np.save(torchrec_dir / "day_0_labels.npy", np.zeros((1, 1), np.int32))
    with pytest.raises(FileExistsError, match="dataset files without meta.json"):
        preprocess([sample], torchrec_dir, PreprocessOptions(**QUIET))
    with pytest.raises(PreprocessError, match="fewer than --days 7"):
        _write_rows(tmp_path / "short.txt", _rows(sample)[:3])
        preprocess([tmp_path / "short.txt"], tmp_path / "short", PreprocessOptions(**QUIET))


def test_terabyte_days_and_cli(sample, tmp_path, capsys):
    rows = _rows(sample)
    days = []
    for i in range(3):
        path = tmp_path / f"day_{i}"
        path.write_text("\n".join("\t".join(r) for r in rows[i * 30 : i * 30 + 30]) + "\n")
        days.append(str(path))
    out = tmp_path / "tb"
    args = [
        "--input",
        *days,
        "--out",
        str(out),
        "--hash-size",
        "500",
        "--workers",
        "1",
        "--no-progress",
    ]
    assert criteo.main(args) == 0
    assert "wrote 90 rows in 3 days" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["day_rows"] == [30, 30, 30] and meta["source"] == "criteo_terabyte"
    assert meta["num_embeddings_per_feature"] == [500] * 26
    first_of_day_1 = np.load(layout.day_file(out, 1, "sparse"))[0, 0]
    assert first_of_day_1 == 1 + int(rows[30][14], 16) % 499

    assert criteo.main(["--input", *days, "--out", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert criteo.main(["--input", days[1], days[0], "--out", str(tmp_path / "x")]) == 2
    assert "day order" in capsys.readouterr().err
    assert criteo.main(["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "input file not found" in capsys.readouterr().err
    packed = tmp_path / "day_0.gz"
    packed.write_bytes(gzip.compress(sample.read_bytes()))
    assert criteo.main(["--input", str(packed), "--out", str(tmp_path / "x")]) == 2
    assert "gzip-compressed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        criteo.main(["--input", *days, "--out", str(tmp_path / "x"), "--days", "5"])
    assert "--days applies to a single input" in capsys.readouterr().err

    rows[40][3] = "x"
    _write_rows(tmp_path / "bad.txt", rows)
    skip = [
        "--input",
        str(tmp_path / "bad.txt"),
        "--out",
        str(tmp_path / "s"),
        "--skip-bad-rows",
        "--no-progress",
    ]
    assert criteo.main(skip) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 malformed rows" in printed and "bad.txt, line 41: field I3" in printed


def test_force_keeps_stats_json_only_when_it_describes_the_new_dataset(sample, tmp_path, capsys):
    """`data stats` stamps stats.json with the rows and id ranges it describes; a --force replacement
    carries it over only when the new dataset has the same, and says so when it leaves it behind."""
    from recsearch.data import stats
    from recsearch.tables import load_tables

    out = tmp_path / "out"
    preprocess([sample], out, PreprocessOptions(hash_size=(1000,), **QUIET))
    assert stats.main([str(out), "--out", str(out / "stats.json"), "--batch-size", "16", "--max-batches", "1"]) == 0
    stamp = json.loads((out / "stats.json").read_text())[layout.STATS_DATASET_KEY]
    assert stamp == {"day_rows": [15, 15, 14, 14, 14, 14, 14], "num_embeddings_per_feature": [1000] * 26}
    assert len(load_tables(out / "stats.json")) == 26  # the stamp does not disturb the table readers
    before = (out / "stats.json").read_bytes()

    preprocess([sample], out, PreprocessOptions(hash_size=(1000,), force=True, **QUIET))  # the same data
    assert (out / "stats.json").read_bytes() == before
    capsys.readouterr()
    preprocess([sample], out, PreprocessOptions(hash_size=(1000,), days=3, force=True, **QUIET))
    assert not (out / "stats.json").exists()
    assert "stats.json described the replaced dataset" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.txt"]  # nothing left beside it

    (out / "stats.json").write_text('{"tables": []}\n')  # no stamp (older, or by hand): kept as before
    preprocess([sample], out, PreprocessOptions(force=True, **QUIET))
    assert (out / "stats.json").read_text() == '{"tables": []}\n'


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize(
    "write, message",
    [
        # Criteo's test.txt: no label column, 39 fields in every line (no row left in any chunk)
        (
            lambda rows: ["\t".join(r[1:]) for r in rows],
            "expected 40 tab-separated fields, found 39: no label column? (Criteo's unlabeled "
            "test.txt has 39;",
        ),
        (
            lambda rows: [",".join(r) for r in rows],
            "expected 40 tab-separated fields, found 1: no tab but commas; the fields must be "
            "tab-separated",
        ),
        (
            lambda rows: [" ".join(r) for r in rows],
            "expected 40 tab-separated fields, found 1: no tab in the line",
        ),
    ],
)
def test_a_chunk_with_no_row_of_40_fields_is_a_field_count_error(
    sample, tmp_path, capsys, write, message, skip
):
    """Every line of a chunk set aside for its field count left _validate an empty table, and a
    traceback (pc.max of no values is None) instead of the error naming the line."""
    sample.write_text("\n".join(write(_rows(sample))) + "\n")
    args = ["--input", str(sample), "--out", str(tmp_path / "o"), "--workers", "1", "--no-progress"]
    assert criteo.main(args + ["--skip-bad-rows"] * skip) == 2
    err = capsys.readouterr().err
    first = f"{sample}, line 1: {message}"
    if skip:
        assert err.startswith(
            f"recsearch data preprocess: no rows remain: all 100 lines were bad rows and skipped, "
            f"the first: {first}"
        )
    else:
        assert err.startswith(f"recsearch data preprocess: {first}")
        assert "Traceback" not in err
    assert not list(tmp_path.glob("o*"))


def test_validate_takes_a_table_of_no_rows():
    empty = [pa.chunked_array([], pa.binary())] * criteo.NUM_FIELDS
    for hex_prefix_possible in (False, True):
        for int32_dense in (False, True):
            checked = criteo._validate(empty, int32_dense, hex_prefix_possible)
            assert checked.dense.shape == (0, 13) and checked.values.shape == (0, 26)
            assert not checked.bad.any() and checked.labels.shape == (0,)


def test_a_wrong_field_count_in_a_line_that_is_not_utf8(sample, tmp_path):
    """pyarrow decodes a malformed row for its handler as UTF-8 and failed on other bytes."""
    raw = sample.read_bytes().split(b"\n")
    raw[3] = b"05db\xff164\t1"
    sample.write_bytes(b"\n".join(raw))
    with pytest.raises(PreprocessError, match="line 4: expected 40 tab-separated fields, found 2"):
        preprocess([sample], tmp_path / "a", PreprocessOptions(**QUIET))
    meta = preprocess([sample], tmp_path / "s", PreprocessOptions(skip_bad_rows=True, **QUIET))
    assert meta.total_rows == 99 and meta.day_rows == (14, 15, 14, 14, 14, 14, 14)
    reference = preprocess(
        [KAGGLE_SAMPLE], tmp_path / "r", PreprocessOptions(days=2, **QUIET)
    )  # the rows kept are the same rows, whichever way the chunk was parsed
    ours = preprocess([sample], tmp_path / "o", PreprocessOptions(days=2, skip_bad_rows=True, **QUIET))
    assert (ours.day_rows, reference.day_rows) == ((49, 50), (50, 50))
    keep = np.r_[0:3, 4:100]
    for kind in ("dense", "sparse", "labels"):
        np.testing.assert_array_equal(
            _all(tmp_path / "o", kind, 2), _all(tmp_path / "r", kind, 2)[keep]
        )


def test_a_directory_as_input_says_so(tmp_path, capsys):
    (tmp_path / "tb").mkdir()
    assert criteo.main(["--input", str(tmp_path / "tb"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"recsearch data preprocess: {tmp_path / 'tb'}: a directory; --input takes the TSV files "
        "themselves: train.txt, or day_0 day_1 ... day_23 in day order"
    )
    assert "not found" not in err


@pytest.mark.parametrize(
    "lines, days, message",
    [
        # --days 7 of 10 lines: day 6 has 1 line (val 1, test 0)
        (10, 7, "10 lines cut into --days 7 leave the last day (day 6, split into val and test) "
                "1 of the 4 lines it needs: too few rows (val 1, test 0); every split needs at "
                "least 2 (val and test are scored by AUC, which needs a click and a non-click). "
                "Give at least 28 lines, or at most --days 2"),
        (27, 7, "leave the last day (day 6, split into val and test) 3 of the 4 lines it needs: "
                "too few rows (test 1); every split needs at least 2 (val and test are scored by "
                "AUC, which needs a click and a non-click). Give at least 28 lines, or at most "
                "--days 6"),
        (7, 2, "(day 1, split into val and test) 3 of the 4 lines it needs: too few rows "
               "(test 1); every split needs at least 2 (val and test are scored by AUC, which "
               "needs a click and a non-click). Give at least 8 lines"),
    ],
)
def test_a_split_of_fewer_than_two_rows_is_refused_before_the_row_pass(
    sample, tmp_path, capsys, monkeypatch, lines, days, message
):
    _write_rows(sample, _rows(sample)[:lines])
    monkeypatch.setattr(criteo, "_write_days", None)  # never reached
    assert criteo.main(["--input", str(sample), "--out", str(tmp_path / "o"), "--days",
                        str(days), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recsearch data preprocess: {sample}: ") and message in err
    assert not list(tmp_path.glob("o*"))


def test_the_smallest_inputs_every_split_has_two_rows_of(sample, tmp_path):
    rows = _rows(sample)
    _write_rows(sample, rows[:28])
    meta = preprocess([sample], tmp_path / "k", PreprocessOptions(**QUIET))
    assert meta.day_rows == (4,) * 7
    assert [layout.split_rows(meta, s) for s in layout.SPLITS] == [24, 2, 2]
    days = [tmp_path / "day_0", tmp_path / "day_1"]
    _write_rows(days[0], rows[:2])
    _write_rows(days[1], rows[2:6])
    meta = preprocess(days, tmp_path / "t", PreprocessOptions(**QUIET))
    assert [layout.split_rows(meta, s) for s in layout.SPLITS] == [2, 2, 2]


@pytest.mark.parametrize(
    "day_lines, message",
    [
        ((50, 1), "too few rows (val 1, test 0); every split needs at least 2 (val and test are "
                  "scored by AUC, which needs a click and a non-click). Each input is one day, "
                  "and the last ({last}, day 1) is split into val and test: it needs at least 4 "
                  "lines, and the train inputs before it 2 lines in all"),
        ((30, 30, 3), "too few rows (test 1)"),
        ((1, 30), "too few rows (train 1)"),
        ((30, 0, 30), "{day_1}: an empty file (it would be day 1, with no rows)"),
    ],
)
def test_several_inputs_that_leave_a_split_short_are_refused(
    sample, tmp_path, capsys, day_lines, message
):
    rows = _rows(sample)
    days = []
    for i, n in enumerate(day_lines):
        days.append(tmp_path / f"day_{i}")
        _write_rows(days[-1], rows[:n])
    assert criteo.main(["--input", *map(str, days), "--out", str(tmp_path / "o"),
                        "--no-progress"]) == 2
    expected = message.format(last=days[-1], day_1=days[1])
    assert capsys.readouterr().err.startswith(f"recsearch data preprocess: {expected}")


def test_skipped_rows_that_leave_a_split_short_are_refused(sample, tmp_path):
    rows = _rows(sample)[:28]  # 7 days of 4 lines: test = lines 27-28
    rows[26][3] = "x"
    _write_rows(sample, rows)
    with pytest.raises(PreprocessError) as err:
        preprocess([sample], tmp_path / "o", PreprocessOptions(skip_bad_rows=True, **QUIET))
    assert str(err.value) == (
        "after skipping 1 bad rows, too few rows (test 1); every split needs at least 2 (val and "
        "test are scored by AUC, which needs a click and a non-click) "
        "(rows per day: [4, 4, 4, 4, 4, 4, 3])"
    )
    assert not list(tmp_path.glob("o*"))
