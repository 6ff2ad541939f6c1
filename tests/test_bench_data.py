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
    assert "- Batch 256, loader >= TorchRec's (same storage): " in text
    assert "(met)" in text or "(NOT met)" in text

    assert bench_data.main(args) == 0  # re-running replaces the section instead of appending
    assert md.read_text().count(bench_data.SECTION_START) == 1


def test_original_is_skipped_with_a_reason(tmp_path):
    assert bench_data.original_unavailable(None, "python") == "no --dlrm-repo given"
    assert "not a checkout" in bench_data.original_unavailable(tmp_path, "python")
