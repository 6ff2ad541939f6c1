"""Every shipped training config loads strictly and says which command uses it."""

from pathlib import Path

import pytest

from recsearch import config
from recsearch.data.synthetic import KAGGLE_CARDINALITIES
from recsearch.model.dlrm import table_rows
from recsearch.train.trainer import TrainConfig
from recsearch.types import ArchSpec, Interaction

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads_and_names_its_command(path):
    cfg = config.load(TrainConfig, path)
    assert path.read_text().startswith(f"# Used by: recsearch train --config configs/train/{path.name}")
    assert cfg.plan == "torchrec" and cfg.epochs >= 1


def test_kaggle_reference_is_the_reference_model_and_fits_on_a_cpu():
    cfg = config.load(TrainConfig, CONFIGS / "kaggle_reference.yaml")
    assert cfg.arch == ArchSpec(
        embedding_dim=16, bottom_mlp=(512, 256, 64, 16), top_mlp=(512, 256, 1), interaction=Interaction.DOT
    )
    hp = cfg.hparams
    assert (hp.embedding_optimizer, hp.dense_optimizer, hp.embedding_lr, hp.dense_lr) == ("sgd", "sgd", 0.1, 0.1)
    assert hp.batch_size == 2048
    rows = table_rows(KAGGLE_CARDINALITIES, cfg.max_rows_per_table)
    embedding_bytes = sum(rows) * cfg.arch.embedding_dim * 4
    assert embedding_bytes < 512 * 2**20  # SGD keeps no optimizer state
