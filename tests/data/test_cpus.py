"""The default worker count: this process's CPUs (affinity), capped by its cgroup's CPU quota."""

import os

import pytest

from recsearch.data import cpus


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "quota", "cap"),
    [("max 100000", None, None), ("200000 100000", 2.0, 2), ("150000 100000", 1.5, 2), ("50000 100000", 0.5, 1)],
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, quota, cap):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cpus.cgroup_cpu_quota(tmp_path) == quota
    assert cpus.usable_cpus(tmp_path) == (_affinity() if cap is None else min(_affinity(), cap))


def test_a_quota_below_the_affinity_caps_it(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cpus.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 workers (when 2 are allowed)
    assert cpus.usable_cpus(tmp_path) == min(2, _affinity())


@pytest.mark.parametrize(("folder", "quota_us", "expected"), [("cpu", "100000", 1.0), ("cpu,cpuacct", "300000", 3.0),
                                                           ("cpu", "-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, folder, quota_us, expected):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "cpu.cfs_quota_us").write_text(quota_us + "\n")
    (tmp_path / folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_quota(tmp_path) == expected


def test_no_cgroup_files_or_unreadable_ones_mean_no_limit(tmp_path):
    assert cpus.cgroup_cpu_quota(tmp_path) is None
    assert cpus.usable_cpus(tmp_path) == _affinity()
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cpus.cgroup_cpu_quota(tmp_path) is None


def test_the_data_commands_default_to_it(tmp_path, monkeypatch):
    """Both data commands take their default worker count from usable_cpus, not os.cpu_count."""
    from recsearch.data import synthetic
    from recsearch.data.synthetic import SynthConfig

    monkeypatch.setattr(synthetic, "usable_cpus", lambda: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # the host's cores, which the default must not take
    meta = synthetic.generate(SynthConfig(num_days=2, rows_per_day=2000, cardinality_scale=0.001, chunk_rows=500),
                              tmp_path / "d", progress=False)
    assert meta.extra["workers"] == 1

    import shutil

    from recsearch.data import criteo
    from tests.conftest import KAGGLE_SAMPLE

    sample = tmp_path / "train.txt"
    shutil.copy(KAGGLE_SAMPLE, sample)
    monkeypatch.setattr(criteo, "usable_cpus", lambda: 1)
    meta = criteo.preprocess([sample], tmp_path / "p", criteo.PreprocessOptions(hash_size=(1000,), progress=False))
    assert meta.extra["workers"] == 1
