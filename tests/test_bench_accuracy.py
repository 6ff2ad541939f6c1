import json
import re

import pytest
import yaml

from tools import bench_accuracy

REPO = bench_accuracy.REPO


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _verdict(text: str, prefix: str, pattern: str) -> tuple[float, bool]:
    """The number and met/NOT met of the one line starting with prefix."""
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    found = re.match(pattern, line.removeprefix(prefix))
    assert found, line
    return float(found.group(1)), found.group(2) == "met"


@pytest.mark.slow
def test_accuracy_bench_runs_every_model_on_one_split_and_writes_its_section(tmp_path):
    data_cfg = yaml.safe_load((REPO / "configs" / "data" / "ceiling.yaml").read_text())
    data_cfg.update(rows_per_day=3000, num_days=3)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data_cfg))
    train_cfg = yaml.safe_load((REPO / "configs" / "train" / "ceiling.yaml").read_text())
    train_cfg.update(epochs=1, eval_every_steps=0, latency_batch_sizes=[1], latency_iters=2)
    train_cfg["hparams"]["batch_size"] = 256
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- bench_train_cpu:start -->\nkept\n<!-- bench_train_cpu:end -->\n")
    code = bench_accuracy.main([
        "--data", str(tmp_path / "d"), "--config-data", str(tmp_path / "data.yaml"),
        "--config-train", str(tmp_path / "train.yaml"), "--workdir", str(tmp_path / "w"),
        "--precisions", "fp32/fp32", "fp16/fp32", "--out-md", str(md),
    ])  # fmt: skip
    assert code == 0
    text = md.read_text()
    assert "kept" in text and text.count("<!-- bench_accuracy:start -->") == 1
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    rows = _rows(text)
    assert set(rows) == {"logistic regression (1 epoch)", "DLRM, embeddings fp32, dense fp32",
                         "DLRM, embeddings fp16, dense fp32"}
    for name, run_dir in (("logistic regression (1 epoch)", "logreg"),
                          ("DLRM, embeddings fp16, dense fp32", "dlrm_fp16_fp32")):
        result = json.loads((tmp_path / "w" / run_dir / "result.json").read_text())
        val_auc = result["metrics"]["val"]["auc"]
        assert rows[name][1] == f"{val_auc:.4f}"
        assert rows[name][3] == f"{meta['bayes']['val']['auc'] - val_auc:+.4f}"
    assert rows["logistic regression (1 epoch)"][4] == "+0.0000"
    # each verdict from the numbers in the rows (4 decimals: 1e-4 slack), "met" at its threshold
    default, logreg = rows["DLRM, embeddings fp32, dense fp32"], rows["logistic regression (1 epoch)"]
    fp16 = rows["DLRM, embeddings fp16, dense fp32"]
    gap, met = _verdict(text, "- default config within 0.02 AUC of the ceiling: gap ", r"([0-9.]+) \((met|NOT met)\)")
    assert gap == pytest.approx(meta["bayes"]["val"]["auc"] - float(default[1]), abs=1.5e-4)
    assert met == (gap <= 0.02)
    margin, met = _verdict(text, "- clearly beats logistic regression: ", r"\+?(-?[0-9.]+) val AUC \((met|NOT met)")
    assert margin == pytest.approx(float(default[1]) - float(logreg[1]), abs=1.5e-4)
    assert met == (margin >= 0.01)
    (effect,) = [line for line in text.splitlines() if line.startswith("- AUC effect of embeddings fp16, dense fp32: ")]
    val_effect, test_effect = (float(x) for x in re.findall(r"([+-][0-9.]+) (?:val|test)", effect))
    assert val_effect == pytest.approx(float(fp16[1]) - float(default[1]), abs=1.5e-4)
    assert test_effect == pytest.approx(float(fp16[2]) - float(default[2]), abs=1.5e-4)


def test_a_bad_precision_pair_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_accuracy.parse_args(["--precisions", "fp8/fp32"])
    assert "expected EMB/DENSE with EMB fp32|fp16 and DENSE fp32|bf16" in capsys.readouterr().err
