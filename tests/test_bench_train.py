import pytest

from tools import bench_train


def _rows(text: str, method: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and f"| {method} |" in line
    ]


@pytest.mark.slow
def test_side_by_side_run_writes_measured_rows_and_verdicts(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- bench_data:start -->\nkept\n<!-- bench_data:end -->\n")
    args = ["--rows", "14000", "--batch-size", "256", "--steps", "4", "12", "--repeats", "1",
            "--models", "kaggle", "--methods", "recsearch", "original", "plain",
            "--workdir", str(tmp_path / "w"), "--out-md", str(md)]  # fmt: skip
    assert bench_train.main(args) == 0
    text = md.read_text()
    assert "kept" in text and text.count("<!-- bench_train_cpu:start -->") == 1
    # no --dlrm-repo: the original is skipped, and the section says why
    assert "facebookresearch/dlrm was not measured: no --dlrm-repo given" in text
    for method in (bench_train.RECSEARCH, bench_train.PLAIN):
        (row,) = _rows(text, method)
        ms, samples_per_s, cpu_ms = float(row[2]), float(row[3].replace(",", "")), float(row[4])
        assert ms > 0 and samples_per_s == pytest.approx(256 / ms * 1000, rel=0.01)
        assert 0 < cpu_ms < 4 * ms  # 2 cores: a step cannot use much more CPU than 2x its wall time
    (ours,) = _rows(text, bench_train.RECSEARCH)
    assert "waiting for data" in ours[7]
    assert "in CPU time per step" in text  # recsearch reports its data-wait fraction
    assert "recsearch vs plain PyTorch" in text and ("(met" in text or "(NOT met" in text)


def test_step_window_needs_both_progress_lines():
    assert bench_train._step_ms({10: 1.0, 30: 3.0}, (10, 30), "x") == pytest.approx(100.0)
    with pytest.raises(RuntimeError, match="no progress line at step 10 and 30"):
        bench_train._step_ms({30: 3.0}, (10, 30), "x")


def test_steps_must_fit_the_data_and_the_progress_cadence():
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--steps", "20", "50"])  # 50 is not a multiple of 20
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--rows", "1000", "--batch-size", "2048", "--steps", "1", "2"])


def test_process_cpu_seconds_count_this_process_work():
    import os
    import time

    before = bench_train.process_cpu_s(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    after = bench_train.process_cpu_s(os.getpid())
    assert before is not None and after is not None and 0.2 < after - before < 1.0
    assert bench_train.process_cpu_s(2**22 + 12345) is None  # no such process


def test_cpu_step_window_is_none_without_both_readings():
    cpu_s = {10: 2.0, 30: 6.0}
    assert bench_train._cpu_step_ms(cpu_s, (10, 30)) == pytest.approx(200.0)
    del cpu_s[10]
    assert bench_train._cpu_step_ms(cpu_s, (10, 30)) is None
