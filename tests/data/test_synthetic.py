import hashlib
import json

import numpy as np
import pytest
import torch

from recsearch import config
from recsearch.data import layout, synthetic
from recsearch.data.synthetic import SynthConfig

SMALL = dict(num_days=3, rows_per_day=6000, cardinality_scale=0.001, chunk_rows=2500)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.glob("day_*.npy")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_shapes_ranges_and_meta(tmp_path):
    meta = synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1)
    assert meta.day_rows == (6000, 6000, 6000)
    assert (tmp_path / "meta.json").exists() and not list(tmp_path.glob("*.partial"))
    dense = np.load(layout.day_file(tmp_path, 0, "dense"))
    sparse = np.load(layout.day_file(tmp_path, 1, "sparse"))
    labels = np.load(layout.day_file(tmp_path, 2, "labels"))
    assert dense.shape == (6000, 13) and dense.dtype == np.float32 and dense.min() >= 0
    assert sparse.shape == (6000, 26) and sparse.dtype == np.int32 and labels.shape == (6000, 1)
    rows = np.array(meta.num_embeddings_per_feature)
    assert (sparse >= 0).all() and (sparse < rows).all()
    assert rows[2] == round(10131227 * 0.001) and rows.min() >= 2
    assert abs(float(meta.extra["click_rate"]) - 0.25) < 0.02
    assert set(meta.bayes) == {"train", "val", "test"}
    assert meta.bayes["val"].rows == 3000 and meta.bayes["train"].rows == 12000
    assert 0.7 < meta.bayes["train"].auc < 0.9


def test_deterministic_and_independent_of_worker_count(tmp_path):
    a = synthetic.generate(SynthConfig(**SMALL), tmp_path / "a", workers=1)
    b = synthetic.generate(SynthConfig(**SMALL), tmp_path / "b", workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a.bayes == b.bayes
    c = synthetic.generate(SynthConfig(**{**SMALL, "seed": 1}), tmp_path / "c", workers=1)
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_ids_follow_a_skewed_power_law(tmp_path):
    cfg = SynthConfig(**{**SMALL, "cardinalities": (1000,) * 26, "zipf_exponent_min": 1.1, "zipf_exponent_max": 1.1})
    synthetic.generate(cfg, tmp_path, workers=1)
    ids = np.load(layout.day_file(tmp_path, 0, "sparse"))[:, 5]
    counts = np.sort(np.bincount(ids, minlength=1000))[::-1]
    assert counts[0] > 50 * max(counts[100], 1)  # the head is far more popular than the tail
    assert counts[:10].sum() > 0.3 * counts.sum()
    assert counts.argmax() != 0 or counts[0] != np.bincount(ids)[0]  # popular ids are permuted


def test_multi_hot_layout(tmp_path):
    sizes = (1,) * 20 + (3,) * 6
    meta = synthetic.generate(SynthConfig(**{**SMALL, "multi_hot_sizes": sizes}), tmp_path, workers=1)
    multi = np.load(layout.day_file(tmp_path, 0, "sparse_multi_hot"))
    sparse = np.load(layout.day_file(tmp_path, 0, "sparse"))
    assert meta.multi_hot_sizes == sizes and multi.shape == (6000, 20 + 18)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    np.testing.assert_array_equal(multi[:, offsets], sparse)  # first id of each feature
    # a 3-hot feature draws 3 ids per sample independently
    assert (multi[:, offsets[-1]] != multi[:, offsets[-1] + 1]).mean() > 0.3


def test_histogram_auc_matches_exact_auc():
    rng = np.random.default_rng(0)
    p = rng.beta(2, 5, 20000)
    y = rng.random(20000) < p
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    n_pos, n_neg = y.sum(), (~y).sum()
    exact = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    bins = np.minimum((p * synthetic.AUC_HISTOGRAM_BINS).astype(int), synthetic.AUC_HISTOGRAM_BINS - 1)
    pos = np.bincount(bins[y], minlength=synthetic.AUC_HISTOGRAM_BINS)
    neg = np.bincount(bins[~y], minlength=synthetic.AUC_HISTOGRAM_BINS)
    auc, bound = synthetic.histogram_auc(pos, neg)
    assert abs(auc - exact) <= bound + 1e-12 and abs(auc - exact) < 1e-3


def test_existing_dataset_is_not_overwritten_and_failures_leave_no_meta(tmp_path, monkeypatch):
    synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1)
    with pytest.raises(FileExistsError, match="--force"):
        synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1)

    def boom(task):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_run_chunk", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1, force=True)
    assert not (tmp_path / "meta.json").exists() and not list(tmp_path.glob("*.partial"))


def test_cli_reports_ceiling_and_rejects_bad_keys(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_days: 2\nrows_per_day: 3000\ncardinality_scale: 0.001\n")
    assert synthetic.main(["--config", str(cfg), "--out", str(tmp_path / "d"), "--workers", "1", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "Bayes AUC" in out and "6,000 rows" in out
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["extra"]["seed"] == 3
    cfg.write_text("rows_per_dya: 10\n")
    assert synthetic.main(["--config", str(cfg), "--out", str(tmp_path / "e")]) == 2
    assert "rows_per_dya: unknown key" in capsys.readouterr().err


def _auc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


class _Model(torch.nn.Module):
    """Logistic regression (dim 0), or with dim > 0 a DLRM with a linear top: every pairwise dot
    product of the (dense-projected and id) embeddings gets its own learned weight."""

    def __init__(self, rows, dim):
        super().__init__()
        self.dim = dim
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(rows)[:-1]]))
        self.linear = torch.nn.Embedding(int(sum(rows)), 1)
        torch.nn.init.zeros_(self.linear.weight)
        self.dense = torch.nn.Linear(13, 1 + dim)
        if dim:
            self.factors = torch.nn.Embedding(int(sum(rows)), dim)
            torch.nn.init.normal_(self.factors.weight, std=0.1)
            self.register_buffer("pairs", torch.triu_indices(27, 27, offset=1))
            self.pair_weights = torch.nn.Linear(self.pairs.shape[1], 1, bias=False)

    def forward(self, dense, ids):
        idx = ids + self.offsets
        d = self.dense(dense)
        logit = d[:, 0] + self.linear(idx).sum(dim=(1, 2))
        if self.dim:
            vecs = torch.cat([d[:, None, 1:], self.factors(idx)], dim=1)  # [B, 27, k]
            dots = torch.bmm(vecs, vecs.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
            logit = logit + self.pair_weights(dots)[:, 0]
        return logit


def _fit_and_score(root, meta, dim):
    torch.manual_seed(0)
    load = lambda day: [np.load(layout.day_file(root, day, k)) for k in ("dense", "sparse", "labels")]
    train = [np.concatenate(x) for x in zip(*(load(d) for d in range(meta.num_days - 1)))]
    test = load(meta.num_days - 1)
    model = _Model(meta.num_embeddings_per_feature, dim)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    dense, ids, y = (torch.from_numpy(a) for a in train)
    for _ in range(4):
        for i in torch.randperm(len(y)).split(512):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(dense[i], ids[i].long()), y[i, 0].float()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = model(torch.from_numpy(test[0]), torch.from_numpy(test[1]).long()).numpy()
    return _auc(scores, test[2][:, 0])


@pytest.mark.slow
def test_planted_interactions_are_learnable_beyond_logistic_regression(tmp_path):
    cfg = SynthConfig(num_days=3, rows_per_day=40000, cardinalities=(40,) * 26, chunk_rows=40000)
    meta = synthetic.generate(cfg, tmp_path, workers=1)
    ceiling = (meta.bayes["val"].auc + meta.bayes["test"].auc) / 2
    lr_auc = _fit_and_score(tmp_path, meta, dim=0)
    fm_auc = _fit_and_score(tmp_path, meta, dim=4)
    assert ceiling - lr_auc > 0.05  # first-order terms alone leave a clear gap
    assert fm_auc - lr_auc > 0.025  # a model with embedding interactions closes much of it
    assert fm_auc < ceiling + 0.01  # and nothing beats the ceiling
