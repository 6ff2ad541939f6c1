import re

import pytest

from tools import bench_data


def _table_rows(text: str, method_prefix: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {method_prefix}")
    ]


def _number(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


def _torchrec_storage(recsearch_method: str) -> str:
    """The TorchRec loader row with the same storage as a recsearch loader row."""
    return "(in memory)" if "(in memory" in recsearch_method else "(mmap)"


def _check_loader_verdicts(text: str, loaders: list[list[str]]) -> None:
    """Each recsearch loader's "vs TorchRec" cell and verdict are its rows/s over TorchRec's on the
    same storage, from the rows' own numbers (printed to 2 decimals), "met" exactly at >= 1x."""
    prefix = "- Batch 256, loader >= TorchRec's (same storage): "
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    verdicts = {name: (float(ratio), met == "met")
                for name, ratio, met in re.findall(r"(\([^)]*\)): ([0-9.]+)x \((met|NOT met)\)", line)}
    rows_per_s = {row[0]: _number(row[4]) for row in loaders}
    ours = [row for row in loaders if row[0].startswith("recsearch NpyBatchLoader")]
    assert len(ours) == 3 and len(verdicts) == 3, line
    for row in ours:
        (torchrec,) = [name for name in rows_per_s if name.startswith("TorchRec ") and name.endswith(_torchrec_storage(row[0]))]
        ratio = rows_per_s[row[0]] / rows_per_s[torchrec]
        assert _number(row[5]) == pytest.approx(ratio, abs=0.006), row
        said, met = verdicts[row[0].removeprefix("recsearch NpyBatchLoader ")]
        assert said == pytest.approx(ratio, abs=0.006), (row, line)
        if abs(ratio - 1) > 0.01:  # clear of the rounding at the threshold
            assert met == (ratio >= 1), (row, line)


@pytest.mark.slow
def test_quick_benchmark_writes_a_section_with_measured_numbers(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    args = ["--rows", "4000", "--batch-sizes", "256", "--batches", "3", "--repeats", "1",
            "--workdir", str(tmp_path / "w"), "--out-md", str(md)]  # fmt: skip
    assert bench_data.main(args) == 0
    text = md.read_text()
    assert "kept" in text and text.count(bench_data.SECTION_START) == 1
    assert "was not measured: no --dlrm-repo given" in text  # the original is skipped, with a note

    preprocess = _table_rows(text, "recsearch, ")
    assert len(preprocess) == 2 and preprocess[0][0] == "recsearch, 1 worker"  # and all CPUs
    for row in preprocess:  # rows, seconds, CPU s, rows/s, peak RSS; no original to compare with
        assert row[1] == "4,000" and all(_number(cell) > 0 for cell in row[2:6]) and row[6] == "n/a"

    loaders = _table_rows(text, "recsearch NpyBatchLoader") + _table_rows(text, "TorchRec ")
    assert len(loaders) == 5
    for row in loaders:  # batch, ms/batch, CPU ms/batch, rows/s, vs TorchRec
        assert row[1] == "256" and all(_number(cell) > 0 for cell in row[2:6])
    _check_loader_verdicts(text, loaders)

    assert bench_data.main(args) == 0  # re-running replaces the section instead of appending
    assert md.read_text().count(bench_data.SECTION_START) == 1


def test_original_is_skipped_with_a_reason(tmp_path):
    assert bench_data.original_unavailable(None, "python") == "no --dlrm-repo given"
    assert "not a checkout" in bench_data.original_unavailable(tmp_path, "python")
