"""The `pipeline` engine: DistributedModelParallel + TrainPipelineSparseDist, any number of ranks.

The model is built on the meta device with its embedding optimizer fused into backward; the
sharding plan comes from recsearch.placement.plan.LearnedShardingPlanner (the ranks chosen by
TorchRec's planner, the learned placer, a baseline or a placement file; fused kernels); DMP materializes this rank's shards, which then get the engine-independent initial weights;
TrainPipelineSparseDist overlaps the next batch's copy and input all-to-all with this step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsearch.data.loader import NpyBatchLoader
from recsearch.model.dlrm import EBC_MODULE_PATH, build_model, compile_dense_parts, init_model_tables, user_model
from recsearch.placement.plan import LearnedShardingPlanner
from recsearch.train.config import TrainConfig
from recsearch.train import placement_file
from recsearch.train.engine_report import EngineReport
from recsearch.train.optim import dense_optimizer, embedding_optimizer
from recsearch.train.schedule import apply_lr

class PipelineEngine:
    """DMP + TrainPipelineSparseDist (see the module docstring)."""

    def __init__(
        self, cfg: TrainConfig, rows: list[int], device: torch.device, world_size: int, train_loader: NpyBatchLoader
    ):
        hp = cfg.hparams
        self.device = device
        self.world_size = world_size
        self.train_loader = train_loader
        torch.manual_seed(hp.seed)  # the dense layers' initial weights (the tables': init_model_tables)
        if cfg.model is None:
            model = build_model(
                cfg.arch, rows, device="meta", embedding_dtype=cfg.embedding_precision,
                dense_dtype=cfg.dense_precision, compute_device_type=device.type,
            )
            ebc_path = EBC_MODULE_PATH
        else:  # a user's model (recsearch.model.factory): tables on meta, sharded by DMP below
            model, ebc_path = user_model(cfg.model, cfg.model_args, rows, cfg.arch.embedding_dim, cfg.embedding_precision)
        ebc = model.get_submodule(ebc_path)
        tables = list(ebc.embedding_bag_configs())
        if cfg.compile_dense:
            compile_dense_parts(model)
        emb_cls, emb_kwargs = embedding_optimizer(hp.embedding_optimizer, hp.embedding_lr, device.type)
        apply_optimizer_in_backward(emb_cls, ebc.parameters(), emb_kwargs)
        self.plan = sharding_plan(cfg, model, device, world_size)
        self.model = DistributedModelParallel(module=model, device=device, plan=self.plan)
        init_model_tables(self.model, tables, hp.seed)
        dense_opt = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(self.model.named_parameters())),
            lambda params: dense_optimizer(hp.dense_optimizer, params, hp.dense_lr),
        )
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, dense_opt])
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._loss_sum = torch.zeros((), device=device)
        self._loss_steps = 0  # steps summed into _loss_sum since the last take_loss_sum
        self._pipeline: TrainPipelineSparseDist | None = None
        self._batches: _TimedIterator | None = None
        self.report = EngineReport(engine="pipeline", cuda_graph_note="the pipeline engine runs eagerly")

    def set_lr_multiplier(self, multiplier: float) -> None:
        # The fused embedding optimizers take the new lr at the pipeline's next zero_grad().
        apply_lr(self.optimizer, self._base_lrs, multiplier)

    def start_stretch(self, epoch: int, start_batch: int) -> None:
        self.train_loader.set_epoch(epoch)
        self._pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.device, execute_all_batches=True)
        self._batches = _TimedIterator(self.train_loader.iter_from(start_batch))

    def step(self) -> int | None:
        assert self._pipeline is not None and self._batches is not None
        try:
            # DLRMTrain's output, already detached. zero_grad() inside progress() pushes the lr
            # just set into the fused embedding kernels before their backward runs.
            loss, _logits, labels = self._pipeline.progress(self._batches)
        except StopIteration:
            return None
        self._loss_sum += loss
        self._loss_steps += 1
        self.report.eager_steps += 1
        return labels.numel() * self.world_size  # the last batch of an epoch may be short

    def take_loss_sum(self) -> float:
        """The sum of the steps' losses since the last call, each step's loss the mean over every
        rank (the global batch's loss): one all-reduce of (loss sum, step count) per call, so
        every rank reads the same number and decides a divergence alike. (Deciding it from a
        rank's own loss let one rank stop while another stepped on: mismatched collectives, a
        hang until the process group's timeout.) Every rank must call it at the same step."""
        totals = torch.stack([self._loss_sum.detach().double(),
                              torch.tensor(float(self._loss_steps), dtype=torch.float64, device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        loss_sum, steps = totals.tolist()
        local_steps = self._loss_steps
        self._loss_sum.zero_()
        self._loss_steps = 0
        return loss_sum / steps * local_steps if steps else 0.0

    def end_stretch(self) -> float:
        assert self._pipeline is not None and self._batches is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wait = self._batches.wait_seconds
        self._batches.close()
        self.model = self._pipeline.detach()  # the model can be called directly again
        self._pipeline = self._batches = None
        return wait

    def plan_summary(self) -> dict[str, dict[str, object]]:
        summary: dict[str, dict[str, object]] = {}
        for module_plan in self.plan.plan.values():
            for table, ps in module_plan.items():  # type: ignore[union-attr]
                summary[table] = {"sharding_type": ps.sharding_type, "ranks": ps.ranks, "compute_kernel": ps.compute_kernel}
        return summary


def sharding_plan(cfg: TrainConfig, model, device: torch.device, world_size: int) -> ShardingPlan:  # type: ignore[no-untyped-def]
    """The run's ShardingPlan, always from LearnedShardingPlanner (one road from placement to
    plan): cfg.plan picks who chooses the ranks ("torchrec": TorchRec's planner, table-wise;
    "learned" or a baseline name; or a placement file). TorchRec's default topology and storage
    reservation for this world; the embedding optimizer's state counted (read from the model);
    every table on the fused kernel, so hparams.embedding_optimizer trains it (a table left to
    TorchRec's own planner could become data_parallel and be trained by the dense optimizer);
    a table too big for one device split column- or row-wise."""
    local = world_size if device.type == "cpu" else min(world_size, torch.cuda.device_count())
    planner = LearnedShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device.type, local_world_size=local),
        batch_size=cfg.hparams.batch_size,  # per rank, as TorchRec's planner takes it
        placer=placement_file.plan_placer(cfg.plan),
        debug=False,
    )
    return planner.collective_plan(model, None, dist.GroupMember.WORLD)


class _TimedIterator(Iterator[Batch]):
    """Counts the time the training loop spends waiting for the next batch."""

    def __init__(self, batches: Iterator[Batch]):
        self._batches = batches
        self.wait_seconds = 0.0

    def __next__(self) -> Batch:
        start = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.wait_seconds += time.perf_counter() - start

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close:
            close()
