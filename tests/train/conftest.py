"""A tiny dataset on which a DLRM visibly learns, with its Bayes ceiling in meta.json."""

from pathlib import Path

import numpy as np
import pytest

from recsearch.data import layout

DAY_ROWS = (6144, 6144, 4096)  # train: 12288 rows; val and test: 2048 rows each
IDS_PER_FEATURE = 20
INFORMATIVE_FEATURES = 6  # cat_0..cat_5 move the click probability; the other 20 are noise


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact AUC (Mann-Whitney U), for scores without ties."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def write_learnable_dataset(root: Path, seed: int = 0) -> layout.DatasetMeta:
    """Clicks drawn from p = sigmoid(-1 + sum_f w_f[id_f] (f < 6) + 2 (dense_0 - 0.5)): the ids
    carry most of the signal, so a model must learn its embeddings to beat chance by much.
    meta.bayes holds AUC and log loss of the true p on val and test."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    weights = rng.normal(0.0, 1.0, (INFORMATIVE_FEATURES, IDS_PER_FEATURE))
    bayes = {}
    for day, rows in enumerate(DAY_ROWS):
        dense = rng.random((rows, 13), dtype=np.float32)
        sparse = rng.integers(0, IDS_PER_FEATURE, (rows, 26)).astype(np.int32)
        logit = -1.0 + 2.0 * (dense[:, 0] - 0.5)
        for f in range(INFORMATIVE_FEATURES):
            logit += weights[f, sparse[:, f]]
        p = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(rows) < p).astype(np.int32)
        np.save(layout.day_file(root, day, "dense"), dense)
        np.save(layout.day_file(root, day, "sparse"), sparse)
        np.save(layout.day_file(root, day, "labels"), labels[:, None])
        if day == len(DAY_ROWS) - 1:  # val: first half of the last day, test: second half
            half = (rows + 1) // 2
            for split, part in (("val", slice(0, half)), ("test", slice(half, rows))):
                y, q = labels[part], p[part]
                log_loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
                bayes[split] = layout.SplitBayes(auc=rank_auc(q, y), log_loss=log_loss, rows=len(y))
    meta = layout.DatasetMeta(
        source="synthetic",
        day_rows=DAY_ROWS,
        num_embeddings_per_feature=(IDS_PER_FEATURE,) * 26,
        bayes=bayes,
    )
    layout.write_meta(root, meta)
    return meta


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learnable")
    write_learnable_dataset(root)
    return root


@pytest.fixture(autouse=True)
def _no_process_group_left_behind():
    """Tests that build engines directly join a world of one (tests/train/engines.py); a group a
    test made is destroyed after it, so none leaks into later tests (the in-process runner, a
    trainer run, ...), whatever order they run in. A group a wider fixture made stays."""
    import torch.distributed as dist

    existed = dist.is_available() and dist.is_initialized()
    yield
    if not existed and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
