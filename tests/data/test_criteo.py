import json
import math
import shutil

import numpy as np
import pytest
from torchrec.datasets.criteo import BinaryCriteoUtils

from recsearch.data import criteo, layout
from recsearch.data.criteo import PreprocessError, PreprocessOptions, preprocess

from tests.conftest import KAGGLE_SAMPLE


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "train.txt"
    shutil.copy(KAGGLE_SAMPLE, path)
    return path


def _lines(path):
    return path.read_text().split("\n")


def _all(root, kind, days):
    return np.concatenate([np.load(layout.day_file(root, d, kind)) for d in range(days)])


def test_known_values_of_real_rows(sample, tmp_path):
    meta = preprocess([sample], tmp_path / "out", PreprocessOptions(workers=1))
    assert meta.day_rows == (15, 15, 14, 14, 14, 14, 14)  # dlrm's Kaggle split of 100 rows
    dense, sparse, labels = (_all(tmp_path / "out", k, 7) for k in ("dense", "sparse", "labels"))
    first = _lines(sample)[0].split("\t")
    assert labels[0, 0] == int(first[0]) == 0 and labels.sum() == 29
    assert dense[0, 0] == 0.0  # I1 missing
    assert dense[0, 2] == pytest.approx(math.log1p(5))
    assert dense[0, 4] == pytest.approx(math.log1p(13275), rel=1e-6)
    assert sparse[0, 0] == int("05db9164", 16) and sparse.dtype == np.int64
    # a negative dense value becomes 0 before log1p
    negative = [(i, j) for i, line in enumerate(_lines(sample)) for j, v in enumerate(line.split("\t")[1:14]) if v.startswith("-")]
    assert negative and all(dense[i, j] == 0.0 for i, j in negative)
    # trailing missing categoricals map to 0
    missing = [(i, j) for i, line in enumerate(_lines(sample)) for j, v in enumerate(line.split("\t")[14:]) if v == ""]
    assert missing and all(sparse[i, j] == 0 for i, j in missing)
    assert meta.num_embeddings_per_feature == tuple(int(x) + 1 for x in sparse.max(axis=0))


def test_equals_torchrec_tsv_to_npys(sample, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    BinaryCriteoUtils.tsv_to_npys(
        str(sample), str(ref / "d.npy"), str(ref / "s.npy"), str(ref / "l.npy"), dataset_name="criteo_1tb"
    )
    ours = tmp_path / "ours"
    preprocess([sample], ours, PreprocessOptions(dense_transform="torchrec", workers=1))
    np.testing.assert_array_equal(_all(ours, "dense", 7), np.load(ref / "d.npy"))
    np.testing.assert_array_equal(_all(ours, "sparse", 7), np.load(ref / "s.npy"))
    np.testing.assert_array_equal(_all(ours, "labels", 7), np.load(ref / "l.npy"))
    assert _all(ours, "dense", 7).dtype == np.float32


def test_hash_and_vocabulary_modes(sample, tmp_path):
    meta = preprocess([sample], tmp_path / "h", PreprocessOptions(hash_size=(1000,), workers=1))
    sparse = _all(tmp_path / "h", "sparse", 7)
    assert meta.num_embeddings_per_feature == (1000,) * 26 and sparse.dtype == np.int32
    assert sparse[0, 0] == 1 + int("05db9164", 16) % 999 and sparse.max() < 1000
    assert sparse[99, 25] == 0 or _lines(sample)[99].split("\t")[39] != ""
    meta = preprocess([sample], tmp_path / "v", PreprocessOptions(vocab_threshold=3, workers=1))
    sparse = _all(tmp_path / "v", "sparse", 7)
    vocab0 = np.load(tmp_path / "v" / "vocab_0.npy")
    raw0 = [int(line.split("\t")[14], 16) for line in _lines(sample) if line.split("\t")[14]]
    frequent = sorted(v for v in set(raw0) if raw0.count(v) >= 3)
    assert list(vocab0) == frequent and meta.num_embeddings_per_feature[0] == len(frequent) + 1
    assert sparse[0, 0] == frequent.index(int("05db9164", 16)) + 1
    rare = [i for i, v in enumerate(raw0) if raw0.count(v) < 3]
    assert rare and all(sparse[i, 0] == 0 for i in rare)


@pytest.mark.parametrize(
    "line_no, edit, message",
    [
        (5, lambda f: f[:30], "expected 40 tab-separated fields, found 30"),
        (7, lambda f: f[:20] + ["zz12ab34"] + f[21:], "field C7: not a hex id"),
        (9, lambda f: f[:3] + ["4.5"] + f[4:], "field I3: not an integer, got '4.5'"),
        (2, lambda f: ["2"] + f[1:], "field label: label must be 0 or 1"),
    ],
)
def test_bad_rows_name_file_line_and_field(sample, tmp_path, line_no, edit, message):
    lines = _lines(sample)
    lines[line_no - 1] = "\t".join(edit(lines[line_no - 1].split("\t")))
    sample.write_text("\n".join(lines))
    with pytest.raises(PreprocessError) as err:
        preprocess([sample], tmp_path / "o", PreprocessOptions(workers=1, chunk_bytes=2000))
    assert f"{sample}, line {line_no}: {message}" in str(err.value)
    assert not (tmp_path / "o" / "meta.json").exists() and not list((tmp_path / "o").glob("*"))
    meta = preprocess([sample], tmp_path / "s", PreprocessOptions(workers=1, skip_bad_rows=True))
    assert meta.total_rows == 99 and meta.extra["bad_rows_skipped"] == 1


def test_parallel_output_is_identical_and_large_files_stream(sample, tmp_path):
    big = tmp_path / "big.txt"
    body = sample.read_text()
    big.write_text("\n".join([body] * 200))  # 20,000 lines
    one = preprocess([big], tmp_path / "one", PreprocessOptions(workers=1, chunk_bytes=300_000))
    two = preprocess([big], tmp_path / "two", PreprocessOptions(workers=2, chunk_bytes=300_000))
    assert one.day_rows == two.day_rows and one.total_rows == 20_000
    for kind in ("dense", "sparse", "labels"):
        for d in range(7):
            assert layout.day_file(tmp_path / "one", d, kind).read_bytes() == layout.day_file(tmp_path / "two", d, kind).read_bytes()


def test_terabyte_days_and_cli(sample, tmp_path, capsys):
    days = []
    for i in range(3):
        p = tmp_path / f"day_{i}"
        p.write_text("\n".join(_lines(sample)[i * 30 : i * 30 + 30]) + "\n")
        days.append(str(p))
    out = tmp_path / "tb"
    assert criteo.main(["--input", *days, "--out", str(out), "--hash-size", "500", "--workers", "1"]) == 0
    assert "wrote 90 rows in 3 days" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["day_rows"] == [30, 30, 30] and meta["source"] == "criteo_terabyte"
    assert criteo.main(["--input", *days, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert criteo.main(["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "input file not found" in capsys.readouterr().err
