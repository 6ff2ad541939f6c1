"""Directories of TorchRec's own npy files (no meta.json): table sizes from the config key
num_embeddings_per_feature, or derived from the data, and every failure naming what to set.

The folders are written by TorchRec's own scripts (npy_preproc_criteo, then
sparse_to_contiguous) from the 100 real Criteo rows in ../shared/data."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchrec.datasets.criteo import BinaryCriteoUtils, InMemoryBinaryCriteoIterDataPipe
from torchrec.datasets.scripts import npy_preproc_criteo

from recsearch import config
from recsearch.data import dataset, layout, output_dir
from recsearch.data.loader import NpyBatchLoader
from recsearch.train import logreg, trainer
from recsearch.train.config import TrainConfig
from tests.conftest import KAGGLE_SAMPLE
from tests.search.configs import tiny_search

DAY_LINES = (40, 30, 30)  # the sample's 100 rows as Terabyte-style days day_0..day_2
HASH = 1000


def _write_tsv_days(src: Path, out: Path) -> None:
    lines = src.read_text().splitlines()
    assert len(lines) == sum(DAY_LINES)
    out.mkdir()
    first = 0
    for day, count in enumerate(DAY_LINES):
        (out / f"day_{day}").write_text("\n".join(lines[first : first + count]) + "\n")
        first += count


@pytest.fixture(scope="module")
def torchrec_dirs(tmp_path_factory) -> dict[str, Path]:
    """raw: npy_preproc_criteo --dataset_name criteo_1tb (raw 32-bit hex ids, int64);
    contig: the same with TorchRec's contiguous ids (sparse_to_contiguous), renamed to
    day_{i}_sparse.npy as the shuffle step leaves them."""
    if not KAGGLE_SAMPLE.exists():
        pytest.skip(f"{KAGGLE_SAMPLE} is not there")
    base = tmp_path_factory.mktemp("torchrec_npy")
    _write_tsv_days(KAGGLE_SAMPLE, base / "tsv")
    raw = base / "raw"
    raw.mkdir()
    npy_preproc_criteo.main(
        ["--input_dir", str(base / "tsv"), "--output_dir", str(raw), "--dataset_name", "criteo_1tb"]
    )
    contig = base / "contig"
    shutil.copytree(raw, contig)
    sparse_files = [str(layout.day_file(raw, d, "sparse")) for d in range(len(DAY_LINES))]
    BinaryCriteoUtils.sparse_to_contiguous(sparse_files, str(contig))
    for day in range(len(DAY_LINES)):
        os.replace(contig / f"day_{day}_sparse_contig_freq.npy", layout.day_file(contig, day, "sparse"))
    return {"raw": raw, "contig": contig}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(dataset.CACHE_DIR_ENV, str(tmp_path / "cache"))


def _sparse(root: Path) -> np.ndarray:
    return np.concatenate([np.load(layout.day_file(root, d, "sparse")) for d in range(len(DAY_LINES))])


def test_the_config_key_describes_npy_preproc_output_and_batches_match_torchrec(torchrec_dirs):
    raw = torchrec_dirs["raw"]
    assert not (raw / layout.META_FILE).exists()
    meta = dataset.dataset_meta(raw, [HASH])
    assert meta.num_embeddings_per_feature == (HASH,) * 26
    assert meta.day_rows == DAY_LINES and meta.sparse_dtype == "int64"
    assert meta.dense_transform == "torchrec" and meta.source == "torchrec_npy"
    assert meta.extra["num_embeddings_from"] == "config: num_embeddings_per_feature"
    ours = list(NpyBatchLoader(raw, "val", 4, meta=meta, num_embeddings_per_feature=meta.num_embeddings_per_feature))
    # TorchRec's pipe is given the last day for val (as tests/data/test_loader.py does)
    paths = {k: [str(layout.day_file(raw, 2, k))] for k in ("dense", "sparse", "labels")}
    theirs = list(InMemoryBinaryCriteoIterDataPipe(
        "val", paths["dense"], paths["sparse"], paths["labels"], batch_size=4, rank=0, world_size=1,
        hashes=[HASH] * 26,
    ))
    assert len(ours) == len(theirs) == 4  # val: the first 15 rows of day_2
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.dense_features, b.dense_features)
        assert torch.equal(a.sparse_features.values().long(), b.sparse_features.values().long())
        assert torch.equal(a.labels, b.labels.float())
    assert int(max(b.sparse_features.values().max() for b in ours)) < HASH


def test_raw_hashes_cannot_be_derived_and_the_error_names_the_key(torchrec_dirs):
    raw = torchrec_dirs["raw"]
    top = _sparse(raw).max(axis=0)
    assert top.max() >= 2**31  # real Criteo hashes: the premise of the refusal
    with pytest.raises(ValueError) as err:
        dataset.dataset_meta(raw)
    text = str(err.value)
    first = int(np.argmax(top >= 2**31))
    assert f"feature cat_{first}'s ids reach {int(top[first]):,}" in text
    assert "no meta.json and num_embeddings_per_feature is not set" in text
    assert "num_embeddings_per_feature=[10000000]" in text


def test_contiguous_ids_give_derived_sizes_that_are_stated_and_cached(torchrec_dirs, tmp_path, caplog):
    contig = torchrec_dirs["contig"]
    want = tuple(int(m) + 1 for m in _sparse(contig).max(axis=0))
    assert max(want) > 2 and min(want) >= 2  # TorchRec's contiguous ids start at 2
    with caplog.at_level(logging.WARNING, logger="recsearch.data.dataset"):
        meta = dataset.dataset_meta(contig)
    assert meta.num_embeddings_per_feature == want
    assert meta.extra["num_embeddings_from"] == "data: max id + 1 over 100 rows"
    assert "table sizes derived from the data" in caplog.text and str(list(want)) in caplog.text
    entries = list((tmp_path / "cache" / "table_sizes").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["num_embeddings_per_feature"] == list(want)
    again = dataset.derive_sizes(contig, [0, 1, 2])
    assert again.from_cache and again.num_embeddings_per_feature == want
    # A rewritten day file is a new cache key: the sizes follow the data.
    copy = tmp_path / "changed"
    shutil.copytree(contig, copy)
    day1 = np.load(layout.day_file(copy, 1, "sparse"))
    day1[0, 5] = 5000
    np.save(layout.day_file(copy, 1, "sparse"), day1)
    changed = dataset.derive_sizes(copy, [0, 1, 2])
    assert not changed.from_cache and changed.num_embeddings_per_feature[5] == 5001
    assert changed.num_embeddings_per_feature[:5] == want[:5]


def test_derived_sizes_bound_the_ids_so_loaders_do_not_hash_them_and_config_sizes_are_hashed(torchrec_dirs):
    contig = torchrec_dirs["contig"]
    derived = NpyBatchLoader(contig, "train", 8, meta=dataset.dataset_meta(contig), prefetch_batches=0,
                             in_memory=False)  # memory-mapped: a hashing loader keeps its moduli
    assert derived._hash_per_column is None  # max id + 1 per feature: every id is in range already
    ids = np.concatenate([b.sparse_features.values().numpy() for b in derived])
    want = np.concatenate([np.load(layout.day_file(contig, d, "sparse")) for d in (0, 1)])
    assert np.array_equal(np.sort(ids), np.sort(want.reshape(-1)))
    given = NpyBatchLoader(contig, "train", 8, meta=dataset.dataset_meta(contig, [HASH]), prefetch_batches=0,
                           in_memory=False)
    assert given._hash_per_column is not None  # sizes from the config bound nothing: hashed


def test_every_failure_says_which_way_to_go(tmp_path, torchrec_dirs):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty/meta.json not found, and no day_0_sparse.npy either"):
        dataset.dataset_meta(empty)
    np.save(empty / "train_sparse.npy", np.zeros((2, 26), np.int64))
    with pytest.raises(FileNotFoundError, match="criteo_kaggle output"):
        dataset.dataset_meta(empty)
    partial = tmp_path / "partial"
    shutil.copytree(torchrec_dirs["contig"], partial)
    (partial / "day_2_dense.npy.partial").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="unfinished files .*day_2_dense.npy.partial"):
        dataset.dataset_meta(partial)
    # A preprocess run's work folder killed before meta.json is unfinished, whatever it holds.
    assert dataset.WORK_FOLDER.fullmatch(f"data{output_dir.WORK_TAG}123")
    work = tmp_path / "data.incomplete-4242"
    shutil.copytree(torchrec_dirs["contig"], work)
    with pytest.raises(FileNotFoundError, match="is not a finished recsearch dataset"):
        dataset.dataset_meta(work)
    negative = tmp_path / "negative"
    shutil.copytree(torchrec_dirs["contig"], negative)
    day0 = np.load(layout.day_file(negative, 0, "sparse"))
    day0[3, 7] = -4
    np.save(layout.day_file(negative, 0, "sparse"), day0)
    with pytest.raises(ValueError, match="day_0_sparse.npy: feature cat_7 has the negative id -4"):
        dataset.dataset_meta(negative)
    ours = tmp_path / "ours"
    shutil.copytree(torchrec_dirs["contig"], ours)
    layout.write_meta(ours, layout.infer_meta(ours, (50,) * 26))
    assert dataset.dataset_meta(ours).num_embeddings_per_feature == (50,) * 26
    with pytest.raises(ValueError, match="num_embeddings_per_feature is set, but .*meta.json records"):
        dataset.dataset_meta(ours, [HASH])
    with pytest.raises(ValueError, match="26 table sizes, or of one size"):
        dataset.dataset_meta(torchrec_dirs["raw"], [10, 20])


def test_train_configs_check_the_key(tmp_path):
    base = {"data_dir": "d", "output_dir": "o"}
    assert config.build(TrainConfig, {**base, "num_embeddings_per_feature": [7]}).num_embeddings_per_feature == (7,)
    with pytest.raises(config.ConfigError, match="t.yaml: num_embeddings_per_feature must be a list of 26"):
        config.build(TrainConfig, {**base, "num_embeddings_per_feature": [1, 2, 3]}, origin="t.yaml")
    with pytest.raises(config.ConfigError, match="num_embeddings_per_feature must hold integers >= 1, got 0"):
        config.build(TrainConfig, {**base, "num_embeddings_per_feature": [0]}, origin="t.yaml")
    with pytest.raises(config.ConfigError, match="num_embeddings_per_feature must hold integers"):
        config.build(logreg.LogRegConfig, {**base, "num_embeddings_per_feature": [-1]}, origin="t.yaml")


def _train_yaml(tmp_path: Path, data: Path, **settings) -> Path:
    raw = {
        "data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "arch": {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1]},
        "hparams": {"batch_size": 16},
        "max_steps": 3,
        "log_every_steps": 1,
        "latency_batch_sizes": [],
        "tensorboard": False,
        **settings,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("kind,key", [("raw", [HASH]), ("contig", None)])
def test_recsearch_train_runs_on_torchrec_npy_folders(tmp_path, torchrec_dirs, kind, key):
    settings = {} if key is None else {"num_embeddings_per_feature": key}
    code = trainer.main(["--config", str(_train_yaml(tmp_path, torchrec_dirs[kind], **settings))])
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 3
    assert result["metrics"]["val"]["rows"] == 15 and result["metrics"]["test"]["rows"] == 15
    assert result["config"]["num_embeddings_per_feature"] == key


def test_a_search_over_an_npy_preproc_folder_gives_every_trial_the_table_sizes(tmp_path, torchrec_dirs):
    """The search config's top-level num_embeddings_per_feature reaches every trial's config."""
    from recsearch.search import loop

    raw = tiny_search(torchrec_dirs["raw"], **{
        "num_embeddings_per_feature": [HASH], "base.hparams": {"batch_size": 16}, "base.log_every_steps": 2,
        "space.top_width": [8], "space.batch_size": [16], "fidelity": {"train_rows": [64]}, "trials": 2,
        "objective.serving_batch": 8})
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(path), "--out", str(tmp_path / "s")]) == 0
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "s" / "trials").glob("*/result.json"))]
    assert len(results) == 3  # the reference and two trials
    for result in results:
        assert result["status"] == "completed"
        assert result["config"]["num_embeddings_per_feature"] == [HASH]
        assert 0.0 < result["metrics"]["val"]["auc"] < 1.0


def test_table_size_advice_names_the_callers_key(tmp_path, monkeypatch):
    """dataset_meta / derive_sizes name where the caller's sizes come from: the train/search
    config key by default, a command's option when it says so (key=)."""
    from tests.conftest import write_dataset

    monkeypatch.setenv("RECSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_dataset(tmp_path, day_rows=(20, 10))
    (tmp_path / layout.META_FILE).unlink()
    for day in (0, 1):  # raw 32-bit hashes
        path = layout.day_file(tmp_path, day, "sparse")
        np.save(path, np.load(path).astype(np.int64) + 2**31)
    with pytest.raises(ValueError) as err:
        dataset.dataset_meta(tmp_path)
    assert "num_embeddings_per_feature is not set" in str(err.value)
    assert "e.g. num_embeddings_per_feature=[10000000]" in str(err.value)
    with pytest.raises(ValueError) as err:
        dataset.dataset_meta(tmp_path, key="--table-sizes")
    assert "--table-sizes is not set" in str(err.value)
    assert "e.g. --table-sizes 10000000" in str(err.value)
    assert "num_embeddings_per_feature" not in str(err.value)
    meta = dataset.dataset_meta(tmp_path, [1000], key="--table-sizes")
    assert meta.extra["num_embeddings_from"] == "option: --table-sizes"
