import os
import re
import time

import pytest

from tools import bench_train


def _rows(text: str, method: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and f"| {method} |" in line
    ]


def _usable_cpus() -> int:
    """CPUs this process (and the runs the tool starts, which inherit it) may run on."""
    return len(os.sched_getaffinity(0))


def _verdict(line: str) -> tuple[float, bool]:
    """'... 1.234x ... (met: ...' -> (1.234, True); NOT met -> False."""
    found = re.search(r" ([0-9.]+)x .*\((met|NOT met)\b", line)
    assert found, line
    return float(found.group(1)), found.group(2) == "met"


@pytest.mark.slow
def test_side_by_side_run_writes_measured_rows_and_verdicts(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- bench_data:start -->\nkept\n<!-- bench_data:end -->\n")
    short_steps, steps = 4, 12
    args = ["--rows", "14000", "--batch-size", "256", "--steps", str(short_steps), str(steps), "--repeats", "1",
            "--models", "kaggle", "--methods", "recsearch", "original", "plain",
            "--workdir", str(tmp_path / "w"), "--out-md", str(md)]  # fmt: skip
    started_s = time.monotonic()
    assert bench_train.main(args) == 0
    bench_ms = 1000 * (time.monotonic() - started_s)
    text = md.read_text()
    assert "kept" in text and text.count("<!-- bench_train_cpu:start -->") == 1
    # no --dlrm-repo: the original is skipped, and the section says why
    assert "facebookresearch/dlrm was not measured: no --dlrm-repo given" in text
    measured = {}
    for method in (bench_train.RECSEARCH, bench_train.PLAIN):
        (row,) = _rows(text, method)
        ms, cpu_ms = float(row[2]), float(row[4])
        measured[method] = (ms, cpu_ms)
        # the timed window of steps is part of the whole benchmark's wall time
        assert 0 < ms * (steps - short_steps) < bench_ms
        # CPU time per step: at most every CPU busy for the whole step (the tool sets no thread
        # count; its runs' torch uses every CPU they may run on); 10% for window edges
        assert 0 < cpu_ms < 1.1 * _usable_cpus() * ms, (cpu_ms, ms, _usable_cpus())
    (ours,) = _rows(text, bench_train.RECSEARCH)
    assert "waiting for data" in ours[7]
    (ours_ms, ours_cpu), (plain_ms, plain_cpu) = measured[bench_train.RECSEARCH], measured[bench_train.PLAIN]
    # each verdict is the ratio of the numbers in the rows (printed to 2 decimals: 1% slack), and
    # "met" exactly when recsearch is not slower
    wall_line = next(line for line in text.splitlines() if "recsearch vs plain PyTorch" in line)
    ratio, met = _verdict(wall_line)
    assert ratio == pytest.approx(plain_ms / ours_ms, rel=0.01) and met == (ratio >= 1)
    cpu_line = next(line for line in text.splitlines() if "in CPU time per step:" in line)
    ratio, met = _verdict(cpu_line)
    assert ratio == pytest.approx(plain_cpu / ours_cpu, rel=0.01) and met == (ratio >= 1)
    # the row's "vs plain PyTorch" cell: "<wall>x (<cpu>x CPU)"
    cell_wall, cell_cpu = (float(x) for x in re.findall(r"([0-9.]+)x", ours[6]))
    assert cell_wall == pytest.approx(plain_ms / ours_ms, rel=0.01)
    assert cell_cpu == pytest.approx(plain_cpu / ours_cpu, rel=0.01)


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
