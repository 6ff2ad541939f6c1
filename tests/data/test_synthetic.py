import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsearch import config
from recsearch.data import layout, synthetic
from recsearch.data.synthetic import SynthConfig

REPO = Path(__file__).resolve().parents[2]
# 3 days x 6000 rows in chunks of 2500: the val/test boundary (row 3000 of day 2) cuts a chunk.
SMALL = {"num_days": 3, "rows_per_day": 6000, "cardinality_scale": 0.001, "chunk_rows": 2500}


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.glob("day_*.npy")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _exact_auc(scores, labels):
    """Mann-Whitney AUC with tied scores counted as 1/2 (average ranks)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each value
    ranks = average_rank[inverse]
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _split_rows(root, meta, split, kind):
    return np.concatenate(
        [
            np.load(layout.day_file(root, day, kind))[start:stop]
            for day, start, stop in layout.split_ranges(meta, split)
        ]
    )


def test_exact_auc_helper_matches_pair_counting():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = (rng.random(300) < 0.3).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert _exact_auc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_layout_shapes_dtypes_ranges_and_meta(tmp_path):
    meta = synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1, progress=False)
    assert meta.day_rows == (6000, 6000, 6000) and meta.source == "synthetic"
    assert layout.read_meta(tmp_path) == meta  # meta.json round-trips
    kinds = ("dense", "sparse", "labels")
    expected = ["meta.json"] + [f"day_{d}_{k}.npy" for d in range(3) for k in kinds]
    # no .partial leftovers, and no multi-hot file for a one-hot dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert meta.multi_hot_sizes is None and meta.dense_transform == "log1p"

    rows = np.array(meta.num_embeddings_per_feature)
    assert rows[2] == round(10131227 * 0.001) and rows[8] == 2  # max(2, round(3 * 0.001))
    for day in range(3):
        dense = np.load(layout.day_file(tmp_path, day, "dense"))
        sparse = np.load(layout.day_file(tmp_path, day, "sparse"))
        labels = np.load(layout.day_file(tmp_path, day, "labels"))
        assert dense.shape == (6000, 13) and dense.dtype == np.float32
        assert sparse.shape == (6000, 26) and sparse.dtype == np.int32
        assert labels.shape == (6000, 1) and labels.dtype == np.int32
        assert set(np.unique(labels)) == {0, 1}
        assert (sparse >= 0).all() and (sparse < rows).all()
        # dense is log1p of nonnegative integer counts, heavy-tailed, with some zeros per column
        counts = np.expm1(dense.astype(np.float64))
        np.testing.assert_allclose(counts, np.round(counts), rtol=1e-5, atol=1e-3)
        zero_share = (counts < 0.5).mean(axis=0)
        assert (zero_share > 0.02).all() and (zero_share < 0.7).all()
        assert counts.max() > 50 * np.median(counts)

    assert abs(float(meta.extra["click_rate"]) - 0.25) < 0.02
    assert meta.extra["seed"] == 0 and meta.extra["config"]["rows_per_day"] == 6000
    assert {b.rows for b in meta.bayes.values()} == {12000, 3000}
    assert (meta.bayes["train"].rows, meta.bayes["val"].rows) == (12000, 3000)
    assert 0.72 < meta.bayes["train"].auc < 0.88 and 0.3 < meta.bayes["train"].log_loss < 0.55


def test_bayes_ceiling_is_the_exact_auc_and_log_loss_of_the_true_probabilities(tmp_path):
    cfg = SynthConfig(**SMALL)
    meta = synthetic.generate(cfg, tmp_path, workers=1, progress=False)
    model = synthetic.build_planted_model(cfg)
    for split in layout.SPLITS:
        dense = _split_rows(tmp_path, meta, split, "dense")
        sparse = _split_rows(tmp_path, meta, split, "sparse")
        labels = _split_rows(tmp_path, meta, split, "labels")[:, 0]
        p = synthetic.click_probability(model, dense, sparse)
        log_loss = -np.mean(np.where(labels == 1, np.log(p), np.log1p(-p)))
        bound = meta.extra["bayes_auc_error_bound"][split]
        assert bound < 1e-4
        assert abs(meta.bayes[split].auc - _exact_auc(p, labels)) <= bound + 1e-12
        assert meta.bayes[split].log_loss == pytest.approx(log_loss, rel=1e-9)
    # the bias is calibrated to the target click rate
    p_all = synthetic.click_probability(
        model,
        np.load(layout.day_file(tmp_path, 0, "dense")),
        np.load(layout.day_file(tmp_path, 0, "sparse")),
    )
    assert abs(p_all.mean() - 0.25) < 0.01


def test_histogram_auc_matches_exact_auc_with_and_without_ties():
    rng = np.random.default_rng(0)
    bins = synthetic.AUC_HISTOGRAM_BINS
    for p in (rng.beta(2, 5, 20000), rng.integers(1, 50, 20000) / 50.0):  # continuous; tied
        y = rng.random(len(p)) < p
        index = np.minimum((p * bins).astype(int), bins - 1)
        auc, bound = synthetic.histogram_auc(
            np.bincount(index[y], minlength=bins), np.bincount(index[~y], minlength=bins)
        )
        exact = _exact_auc(p, y.astype(int))
        assert abs(auc - exact) <= bound + 1e-12 and abs(auc - exact) < 1e-3
    assert np.isnan(synthetic.histogram_auc(np.zeros(4), np.ones(4))[0])


def test_same_seed_same_bytes_for_any_worker_count(tmp_path):
    cfg = SynthConfig(**{**SMALL, "rows_per_day": 3000, "chunk_rows": 700})  # 15 chunks to share
    a = synthetic.generate(cfg, tmp_path / "a", workers=1, progress=False)
    b = synthetic.generate(cfg, tmp_path / "b", workers=2, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a.bayes == b.bayes and b.extra["workers"] == 2
    other_seed = SynthConfig(**{**cfg.__dict__, "seed": 1})
    synthetic.generate(other_seed, tmp_path / "c", workers=1, progress=False)
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_ids_follow_the_planted_power_law_through_a_bijection(tmp_path):
    cfg = SynthConfig(**{**SMALL, "cardinalities": (1000,) * 26, "zipf_exponents": (1.1,) * 26})
    synthetic.generate(cfg, tmp_path, workers=1, progress=False)
    model = synthetic.build_planted_model(cfg)
    sparse = np.concatenate([np.load(layout.day_file(tmp_path, d, "sparse")) for d in range(3)])
    # Continuous bounded power law on [1, n + 1): P(rank 1) = (2^(1-s) - 1) / ((n+1)^(1-s) - 1).
    top_share = (2**-0.1 - 1) / (1001**-0.1 - 1)
    for table in (0, 5, 25):
        counts = np.bincount(sparse[:, table], minlength=1000)
        order = np.argsort(counts)[::-1]
        assert order[0] == model.id_shifts[table]  # rank 0 -> id shift: popular ids are scattered
        assert counts[order[0]] / len(sparse) == pytest.approx(top_share, abs=0.015)
        assert counts[order[:10]].sum() > 0.3 * len(sparse)  # a heavy head...
        assert counts[order[0]] > 50 * counts[order[500]]  # ...and a long, thin tail
    assert len({int(m) for m in model.id_shifts}) > 20  # each table has its own permutation


def test_multi_hot_layout_and_first_id_consistency(tmp_path):
    sizes = (1,) * 20 + (3,) * 6
    cfg = SynthConfig(**{**SMALL, "multi_hot_sizes": sizes})
    meta = synthetic.generate(cfg, tmp_path, workers=1, progress=False)
    assert meta.multi_hot_sizes == sizes
    multi = np.load(layout.day_file(tmp_path, 2, "sparse_multi_hot"))
    sparse = np.load(layout.day_file(tmp_path, 2, "sparse"))
    assert multi.shape == (6000, 38) and multi.dtype == np.int32
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    np.testing.assert_array_equal(multi[:, offsets], sparse)  # day_i_sparse: the first id of each
    rows = np.repeat(meta.num_embeddings_per_feature, sizes)
    assert (multi >= 0).all() and (multi < rows).all()
    # a 3-hot feature draws its ids independently (table 20 has 70 rows)
    assert (multi[:, offsets[20]] != multi[:, offsets[20] + 1]).mean() > 0.3
    # labels come from all ids of a feature: the ceiling is reproduced from the multi-hot file
    model = synthetic.build_planted_model(cfg)
    test_rows = slice(3000, 6000)
    dense = np.load(layout.day_file(tmp_path, 2, "dense"))
    p = synthetic.click_probability(model, dense[test_rows], multi[test_rows])
    labels = np.load(layout.day_file(tmp_path, 2, "labels"))[test_rows, 0]
    assert abs(meta.bayes["test"].auc - _exact_auc(p, labels)) < 1e-4
    with pytest.raises(ValueError, match="multi-hot"):
        synthetic.click_probability(model, np.zeros((2, 13)), sparse[:2])


def test_existing_dataset_needs_force_and_force_replaces_it(tmp_path):
    synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1, progress=False)
    (tmp_path / "meta.json").unlink()  # day files without meta.json (like TorchRec's): kept too
    with pytest.raises(FileExistsError, match="dataset files without meta.json"):
        synthetic.generate(SynthConfig(**SMALL), tmp_path, workers=1, progress=False)
    meta = synthetic.generate(
        SynthConfig(**{**SMALL, "num_days": 2}), tmp_path, workers=1, force=True, progress=False
    )
    assert meta.num_days == 2 and not layout.day_file(tmp_path, 2, "dense").exists()
    assert layout.read_meta(tmp_path).day_rows == (6000, 6000)


def _work_folder(out):
    return out.with_name(f"{out.name}.incomplete-{os.getpid()}")


def test_interrupted_run_never_looks_finished(tmp_path, monkeypatch):
    out = tmp_path / "data"
    run_chunk = synthetic._run_chunk
    seen_mid_run = {}

    def crash_on_third_chunk(task):
        if task.index == 2:
            seen_mid_run["out"] = out.exists() and sorted(p.name for p in out.iterdir())
            seen_mid_run["work"] = sorted(p.name for p in _work_folder(out).iterdir())
            raise RuntimeError("disk full")
        return run_chunk(task)

    monkeypatch.setattr(synthetic, "_run_chunk", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.generate(SynthConfig(**SMALL), out, workers=1, progress=False)
    # built beside the output directory, as .partial files; nothing of it in the output directory
    assert not seen_mid_run["out"]
    assert seen_mid_run["work"] and all(name.endswith(".npy.partial") for name in seen_mid_run["work"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the work folder is removed
    # leftovers of a killed run (no meta.json, only .partial files) do not block a new run
    out.mkdir()
    layout.partial_path(layout.day_file(out, 0, "dense")).write_bytes(b"torn")
    monkeypatch.setattr(synthetic, "_run_chunk", run_chunk)
    meta = synthetic.generate(SynthConfig(**SMALL), out, workers=1, progress=False)
    assert meta.num_days == 3
    assert not list(out.glob("*.partial")) and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("failing", ["chunk", "meta"])
def test_force_keeps_the_old_dataset_whole_until_the_new_one_is_complete(tmp_path, monkeypatch, failing):
    """A run replacing a dataset that fails while generating, or just before meta.json (where the
    day files were once committed into the output directory without it), leaves the old dataset
    byte for byte; the user's other files stay with whichever dataset is there."""
    out = tmp_path / "data"
    synthetic.generate(SynthConfig(**SMALL), out, workers=1, progress=False)
    (out / "notes.txt").write_text("mine\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    if failing == "chunk":
        monkeypatch.setattr(synthetic, "_run_chunk", fail)
    else:  # the day files are committed (in the work folder), meta.json is not written
        monkeypatch.setattr(layout, "write_meta", fail)
    with pytest.raises(RuntimeError, match="killed"):
        synthetic.generate(SynthConfig(**{**SMALL, "num_days": 2}), out, workers=1, force=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    monkeypatch.undo()
    meta = synthetic.generate(SynthConfig(**{**SMALL, "num_days": 2}), out, workers=1, force=True, progress=False)
    assert layout.read_meta(out).day_rows == meta.day_rows == (6000, 6000)
    assert not layout.day_file(out, 2, "dense").exists() and (out / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "synth.yaml"
    path.write_text("num_days: 3\nrows_per_dya: 10\nmulti_hot_sizes: [1, 2]\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(SynthConfig, path)
    assert any("rows_per_dya: unknown key" in p and "rows_per_day" in p for p in err.value.problems)
    path.write_text("multi_hot_sizes: [1, 2]\nclick_rate: 1.5\n")
    with pytest.raises(config.ConfigError, match="multi_hot_sizes needs 26 values") as err:
        config.load(SynthConfig, path)
    assert "click_rate must be in (0, 1)" in str(err.value)
    with pytest.raises(config.ConfigError, match="rows_per_day or total_rows, not both"):
        config.load(SynthConfig, path, ["multi_hot_sizes=null", "click_rate=0.2",
                                        "rows_per_day=10", "total_rows=100"])  # fmt: skip
    with pytest.raises(config.ConfigError, match="cardinality_preset must be one of"):
        config.load(SynthConfig, path, ["multi_hot_sizes=null", "click_rate=0.2",
                                        "cardinality_preset=avazu"])  # fmt: skip


def test_total_rows_presets_and_shipped_configs():
    cfg = SynthConfig(
        num_days=4, total_rows=10, cardinality_preset="terabyte_mlperf", cardinality_scale=0.5
    )
    assert cfg.day_rows == (3, 3, 2, 2)
    assert cfg.table_rows[0] == 20_000_000 and cfg.table_rows[5] == 2
    quick = config.load(SynthConfig, REPO / "configs/data/quickstart.yaml")
    assert sum(quick.day_rows) <= 500_000 and max(quick.table_rows) <= 110_000
    kaggle = config.load(SynthConfig, REPO / "configs/data/synthetic_kaggle.yaml")
    assert kaggle.table_rows == synthetic.KAGGLE_CARDINALITIES
    assert kaggle.day_rows == (1_000_000,) * 8
    for name in ("quickstart", "synthetic_kaggle"):
        header = (REPO / f"configs/data/{name}.yaml").read_text().splitlines()[0]
        assert header.startswith("# Used by: recsearch data synth")
        assert f"--config configs/data/{name}.yaml" in header


def test_cli_prints_the_ceiling_and_reports_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_days: 2\nrows_per_day: 3000\ncardinality_scale: 0.001\n")
    argv = ["--config", str(cfg), "--out", str(tmp_path / "d"), "--workers", "1", "--no-progress"]
    assert synthetic.main(argv + ["seed=3"]) == 0
    out = capsys.readouterr().out
    assert "6,000 rows in 2 days" in out and out.count("Bayes AUC") == 3
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["extra"]["seed"] == 3
    assert synthetic.main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
    cfg.write_text("rows_per_dya: 10\n")
    assert synthetic.main(["--config", str(cfg), "--out", str(tmp_path / "e")]) == 2
    assert "rows_per_dya: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


class _LogisticOrFM(torch.nn.Module):
    """Logistic regression on dense + one-hot ids (dim 0) or, with dim > 0, a DLRM-like model with
    a linear top: per-id embeddings (and a dense projection) whose pairwise dot products each get
    a learned weight, like the dot interaction of a DLRM."""

    def __init__(self, table_rows, dim):
        super().__init__()
        self.dim = dim
        offsets = np.concatenate([[0], np.cumsum(table_rows)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets))
        self.linear = torch.nn.EmbeddingBag(int(sum(table_rows)), 1, mode="sum")
        torch.nn.init.zeros_(self.linear.weight)
        self.dense = torch.nn.Linear(13, 1 + dim)
        if dim:
            self.factors = torch.nn.Embedding(int(sum(table_rows)), dim)
            torch.nn.init.normal_(self.factors.weight, std=0.1)
            self.register_buffer("pairs", torch.triu_indices(27, 27, offset=1))
            self.pair_weights = torch.nn.Linear(self.pairs.shape[1], 1, bias=False)

    def forward(self, dense, ids):
        idx = ids + self.offsets
        d = self.dense(dense)
        logit = d[:, 0] + self.linear(idx)[:, 0]
        if self.dim:
            vecs = torch.cat([d[:, None, 1:], self.factors(idx)], dim=1)  # [B, 27, dim]
            dots = torch.bmm(vecs, vecs.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
            logit = logit + self.pair_weights(dots)[:, 0]
        return logit


def _fit_and_score(root, meta, dim):
    torch.manual_seed(0)
    dense, ids, labels = (
        torch.from_numpy(_split_rows(root, meta, "train", k)) for k in ("dense", "sparse", "labels")
    )
    ids, y = ids.long(), labels[:, 0].float()
    model = _LogisticOrFM(meta.num_embeddings_per_feature, dim)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(5):
        for i in torch.randperm(len(y)).split(1024):
            logits = model(dense[i], ids[i])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = model(
            torch.from_numpy(_split_rows(root, meta, "test", "dense")),
            torch.from_numpy(_split_rows(root, meta, "test", "sparse")).long(),
        ).numpy()
    return _exact_auc(scores, _split_rows(root, meta, "test", "labels")[:, 0])


@pytest.mark.slow
def test_planted_interactions_are_learnable_beyond_logistic_regression(tmp_path):
    cfg = SynthConfig(
        num_days=3, rows_per_day=30000, cardinalities=(20,) * 26, num_pairs=12, chunk_rows=30000
    )
    meta = synthetic.generate(cfg, tmp_path, workers=1, progress=False)
    ceiling = meta.bayes["test"].auc
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared machine
    try:
        lr_auc = _fit_and_score(tmp_path, meta, dim=0)
        fm_auc = _fit_and_score(tmp_path, meta, dim=4)
    finally:
        torch.set_num_threads(threads)
    assert ceiling - lr_auc > 0.08  # first-order terms alone leave a clear gap
    assert fm_auc - lr_auc > 0.05  # embeddings with pairwise interactions close much of it
    assert fm_auc < ceiling + 0.01  # and nothing beats the ceiling (up to test-set noise)


def test_synth_and_the_trainer_need_no_pyarrow_or_optuna(tmp_path):
    """The GPU machine (../shared/GPU.md) has numpy, torch and torchrec but no pyarrow and no
    optuna: `recsearch data synth` and the trainer's imports must not reach them (the TSV parser
    and the Bayesian controller do, and are not used there)."""
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(json.dumps({**SMALL, "num_days": 2}))
    code = f"""
import sys
sys.modules.update(pyarrow=None, optuna=None)  # imports of them fail; find_spec says None
import recsearch.train.trainer, recsearch.cli
sys.exit(recsearch.cli.main(["data", "synth", "--config", {str(cfg)!r}, "--out", {str(tmp_path / "d")!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert layout.read_meta(tmp_path / "d").day_rows == (6000, 6000)
