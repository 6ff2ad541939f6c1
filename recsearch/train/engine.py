"""The engine contract: how the trainer's loop drives one training run's steps.

Two engines implement it:
- `single` (recsearch.train.single_engine): one device, TorchRec's FusedEmbeddingBagCollection on
  FBGEMM's TBE (optimizer fused into backward), no sharding, no input all-to-all, no DDP; on CUDA
  the whole step is one captured CUDA graph and the train split can live in device memory.
- `pipeline` (recsearch.train.pipeline_engine): DistributedModelParallel + TrainPipelineSparseDist,
  for any number of ranks.

Both start from the same weights for the same seed (recsearch.model.dlrm.init_model_tables and the
same dense init) and use the same dense optimizer (recsearch.train.optim.DenseOptimizer), so for
the same config they compute the same losses up to floating-point rounding.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from recsearch.train.config import TrainConfig
from recsearch.train.engine_report import EngineReport


class TrainEngine(Protocol):
    """One run's model, optimizer and step machinery, driven stretch by stretch by the trainer."""

    model: torch.nn.Module  # model(batch) -> (loss, (loss, logits, labels)); eval, latency, checkpoints
    optimizer: Any  # every optimizer's state (state_dict / load_state_dict), for checkpoints
    report: EngineReport

    def set_lr_multiplier(self, multiplier: float) -> None:
        """Scale every learning rate to base * multiplier for the following steps."""

    def start_stretch(self, epoch: int, start_batch: int) -> None:
        """Prepare to train `epoch` from this rank's batch `start_batch` on."""

    def step(self) -> int | None:
        """Train one step; return the samples it trained on (all ranks), or None at the end of
        the epoch (no step taken)."""

    def take_loss_sum(self) -> float:
        """Sum of the losses of the steps since the last call (one host synchronisation), each
        step's loss that of the global batch: over several ranks the engine all-reduces the
        window once, so every rank reads the same sum (and stops at a divergence alike)."""

    def end_stretch(self) -> float:
        """Wait for the device; return the seconds the stretch waited for data. Afterwards the
        model can be called directly (evaluation, checkpoint)."""

    def plan_summary(self) -> dict[str, dict[str, object]]:
        """Where each table lives: {table: {sharding_type, ranks, compute_kernel}}."""


def choose_engine(requested: str, world_size: int) -> str:
    """`single` or `pipeline` for the config's `engine` key and the run's world size."""
    if requested == "auto":
        return "single" if world_size == 1 else "pipeline"
    if requested == "single" and world_size != 1:
        raise ValueError(
            f"engine=single trains on one device, but this run has {world_size} ranks: "
            "use engine=pipeline (or auto)"
        )
    return requested


def make_engine(cfg: TrainConfig, rows: list[int], device: torch.device, world_size: int, train_loader) -> TrainEngine:  # type: ignore[no-untyped-def]
    name = choose_engine(cfg.engine, world_size)
    if name == "single":
        from recsearch.train.single_engine import SingleDeviceEngine

        return SingleDeviceEngine(cfg, rows, device, train_loader)
    from recsearch.train.pipeline_engine import PipelineEngine

    return PipelineEngine(cfg, rows, device, world_size, train_loader)
