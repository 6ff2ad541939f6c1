"""Shared scaffolding for the engine tests: a small TrainConfig on the learnable dataset, and a
ready engine with its loader (for tests that drive steps directly)."""

from __future__ import annotations

from pathlib import Path

import torch

from recsearch import config
from recsearch.data import layout
from recsearch.data.loader import NpyBatchLoader
from recsearch.model.dlrm import table_rows
from recsearch.train.config import TrainConfig
from recsearch.train.engine import make_engine
from recsearch.train.trainer import init_distributed

SMALL_ARCH = ["arch.embedding_dim=8", "arch.bottom_mlp=[16,8]", "arch.top_mlp=[16,1]"]


def small_config(data: Path, out: Path, *overrides: str) -> TrainConfig:
    raw = config.apply_overrides(
        {},
        [
            f"data_dir={data}", f"output_dir={out}", *SMALL_ARCH, "hparams.batch_size=256",
            "log_every_steps=1", "latency_batch_sizes=[]", "tensorboard=false", *overrides,
        ],
    )
    return config.build(TrainConfig, raw)


def engine_and_loader(cfg: TrainConfig, device: torch.device):  # type: ignore[no-untyped-def]
    init_distributed(device.type)  # a world of one, as `recsearch train` makes (DMP needs it)
    meta = layout.read_meta(cfg.data_dir)
    rows = table_rows(meta.num_embeddings_per_feature, cfg.max_rows_per_table)
    loader = NpyBatchLoader(
        cfg.data_dir, "train", cfg.hparams.batch_size, shuffle=True, seed=cfg.hparams.seed,
        num_embeddings_per_feature=rows, pin_memory=device.type == "cuda", meta=meta,
    )
    return make_engine(cfg, rows, device, 1, loader), loader


def train_steps(engine, steps: int, epoch: int = 0) -> list[float]:  # type: ignore[no-untyped-def]
    """Loss of each of the first `steps` steps of `epoch` (one loss read-back per step)."""
    engine.set_lr_multiplier(1.0)
    engine.start_stretch(epoch, 0)
    losses = []
    for _ in range(steps):
        assert engine.step() is not None
        losses.append(engine.take_loss_sum())
    engine.end_stretch()
    return losses
