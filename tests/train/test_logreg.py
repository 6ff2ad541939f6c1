"""The logistic-regression baseline: on data whose true click model is additive in the ids (the
learnable fixture), LR is the right model family, so it must come close to the Bayes ceiling;
its result file has the trainer's metric layout; bad input is a clear error."""

import json

import pytest

from recsearch import cli
from tests.train.conftest import DAY_ROWS


def test_logreg_reaches_near_the_ceiling_on_additive_data(tmp_path, learnable_data, capsys):
    out = tmp_path / "lr"
    code = cli.main(["baseline", "logreg", "--data", str(learnable_data), "--out", str(out),
                     "--epochs", "3", "--lr", "0.1", "--batch-size", "256"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["model"] == "logistic_regression"
    assert result["train_rows"] == sum(DAY_ROWS[:-1])
    assert result["steps"] == 3 * -(-sum(DAY_ROWS[:-1]) // 256)
    for split in ("val", "test"):
        got, ceiling = result["metrics"][split], result["bayes"][split]
        assert got["rows"] == DAY_ROWS[-1] // 2
        assert ceiling["auc"] - 0.03 < got["auc"] <= ceiling["auc"] + 0.02
        assert got["log_loss"] < ceiling["log_loss"] + 0.05
    assert f"val AUC {result['metrics']['val']['auc']:.4f}" in capsys.readouterr().out


def test_fewer_rows_and_a_seed_change_the_fit(tmp_path, learnable_data):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        assert cli.main(["baseline", "logreg", "--data", str(learnable_data), "--out", str(out),
                         "--train-rows", "1000", "--eval-rows", "500", "--seed", str(seed)]) == 0
        runs.append(json.loads((out / "result.json").read_text()))
    assert runs[0]["train_rows"] == 1000 and runs[0]["metrics"]["val"]["rows"] == 500
    assert runs[0]["metrics"]["val"]["auc"] != runs[1]["metrics"]["val"]["auc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "recsearch baseline logreg: error: --lr must be a finite number > 0, got 0.0\n"),
        (["--epochs", "0"], "recsearch baseline logreg: error: --epochs must be >= 1, got 0\n"),
        (["--batch-size", "-4"], "recsearch baseline logreg: error: --batch-size must be >= 1, got -4\n"),
        (["--l2", "-0.5"], "recsearch baseline logreg: error: --l2 must be a finite number >= 0, got -0.5\n"),
        (["--eval-rows", "0"], "recsearch baseline logreg: error: --eval-rows must be >= 1 (or left out), got 0\n"),
        (["--train-rows", "-1"], "recsearch baseline logreg: error: --train-rows must be >= 1 (or left out), got -1\n"),
        (["--max-rows-per-table", "0"],
         "recsearch baseline logreg: error: --max-rows-per-table must be >= 1 (or left out), got 0\n"),
        (["--seed", "-1"], "recsearch baseline logreg: error: --seed must be in 0..9223372036854775807, got -1\n"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, learnable_data, capsys, args, message):
    out = tmp_path / "lr"
    assert cli.main(["baseline", "logreg", "--data", str(learnable_data), "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == message
    assert not out.exists()


def test_a_directory_without_a_dataset_is_named(tmp_path, capsys):
    assert cli.main(["baseline", "logreg", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing/meta.json not found" in err
