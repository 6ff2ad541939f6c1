import re

import pytest

from tools import bench_data


@pytest.mark.slow
def test_quick_benchmark_writes_a_section_with_measured_numbers(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    args = ["--rows", "4000", "--batch-sizes", "256", "--batches", "3", "--repeats", "1",
            "--workdir", str(tmp_path / "w"), "--out-md", str(md)]
    assert bench_data.main(args) == 0
    text = md.read_text()
    assert "kept" in text and text.count(bench_data.SECTION_START) == 1
    rows = re.findall(r"\| recsearch, (\d) workers? \| 4,000 \| ([\d.]+) \| ([\d,]+) \|", text)
    assert len(rows) == 2 and all(int(r[2].replace(",", "")) > 0 for r in rows)
    assert re.search(r"\| TorchRec InMemoryBinaryCriteoIterDataPipe \(mmap\) \| 256 \| [\d.]+ \|", text)
    assert bench_data.main(args) == 0  # re-running replaces the section instead of appending
    assert md.read_text().count(bench_data.SECTION_START) == 1
