import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recsearch.data import synthetic
from recsearch.data.synthetic import SynthConfig
from recsearch.train import trainer

REPO = Path(__file__).resolve().parents[2]
ARCH = "arch.embedding_dim=8 arch.bottom_mlp=[32,8] arch.top_mlp=[32,1]".split()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(num_days=3, rows_per_day=8000, cardinalities=(30,) * 26, chunk_rows=8000, seed=1)
    synthetic.generate(cfg, root, workers=1)
    return root


def _config(tmp_path, data, extra=""):
    path = tmp_path / "train.yaml"
    path.write_text(
        f"data_dir: {data}\noutput_dir: {tmp_path / 'out'}\n"
        "hparams:\n  batch_size: 256\n  embedding_optimizer: rowwise_adagrad\n  embedding_lr: 0.1\n"
        "  dense_optimizer: adagrad\n  dense_lr: 0.05\n"
        f"epochs: 2\nlog_every_steps: 10\nlatency_iters: 5\nlatency_batch_sizes: [1, 64]\n{extra}"
    )
    return path


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_single_process_training_learns_and_writes_result(tmp_path, synth_data):
    cfg = _config(tmp_path, synth_data, "eval_every_steps: 40\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recsearch.cli", "train", "--config", str(cfg), *ARCH],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 2 * (16000 // 256 + 1)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] - 0.02
    val = result["metrics"]["val"]
    assert 0.58 < val["auc"] < result["bayes"]["val"]["auc"] + 0.01  # chance: 0.5 +- 0.015
    assert 0.0 < val["log_loss"] < 0.69 and val["rows"] == 4000  # first half of the last day
    assert set(result["latency_ms"]) == {"1", "64"}
    assert 0 < result["latency_ms"]["1"]["p50_ms"] <= result["latency_ms"]["1"]["p99_ms"]
    assert 0 <= result["data_wait_fraction"] < 1 and result["samples_per_s"] > 0
    assert len(result["plan"]) == 26 and result["peak_memory_mb_per_rank"][0] > 0
    assert list((tmp_path / "out" / "tb").glob("events.out.tfevents.*"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_ranks_with_a_table_wise_placement(tmp_path, synth_data):
    placement = {f"t_cat_{i}": i % 2 for i in range(26)}
    (tmp_path / "placement.json").write_text(json.dumps({"placement": placement}))
    cfg = _config(tmp_path, synth_data, f"plan: {tmp_path / 'placement.json'}\nepochs: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), "-m", "recsearch.cli", "train", "--config", str(cfg), *ARCH],
        capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2
    assert result["steps"] == 16000 // (256 * 2)
    for i in range(26):
        assert result["plan"][f"t_cat_{i}"]["sharding_type"] == "table_wise"
        assert result["plan"][f"t_cat_{i}"]["ranks"] == [i % 2]
    assert result["metrics"]["val"]["rows"] == 4000 - 4000 % 512  # full rounds of full batches
    assert result["metrics"]["test"]["auc"] > 0.55
    assert len(result["peak_memory_mb_per_rank"]) == 2


@pytest.mark.slow
def test_divergence_is_recorded(tmp_path, synth_data):
    cfg = _config(tmp_path, synth_data, "epochs: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recsearch.cli", "train", "--config", str(cfg), *ARCH,
         "hparams.dense_optimizer=sgd", "hparams.dense_lr=1e30", "hparams.embedding_optimizer=sgd",
         "hparams.embedding_lr=1e30"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert proc.returncode == 1
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "diverged" and result["metrics"] == {}
    assert result["steps"] <= 10


def test_config_errors_and_bad_placement(tmp_path, synth_data, capsys):
    cfg = _config(tmp_path, synth_data)
    assert trainer.main(["--config", str(cfg), "hparams.batchsize=4"]) == 2
    assert "hparams.batchsize: unknown key" in capsys.readouterr().err
    (tmp_path / "p.json").write_text(json.dumps({"t_cat_0": 0}))
    assert trainer.main(["--config", str(cfg), *ARCH, f"plan={tmp_path / 'p.json'}"]) == 2
    assert "no rank for tables" in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "failed" and "no rank for tables" in result["error"]
