"""The `single` engine: one device, no sharding machinery, and on CUDA the whole step as one graph.

The model is recsearch's DLRM with TorchRec's FusedEmbeddingBagCollection: all tables in one FBGEMM
TBE that applies the embedding optimizer inside its backward kernel. There is nothing to
communicate, so there is no sharding plan, input all-to-all or DDP wrapper. A step is

    gather the batch -> forward -> loss -> backward (tables updated in place) -> dense update

with no host synchronisation anywhere in it: the KeyedJaggedTensor's lengths and offsets are fixed
for fixed hotness (one id per feature on Criteo) and built once, the loss is summed on the device
and read once per log window, and every learning rate reaches the device as a tensor (the dense
optimizer's lr tensor; for SGD tables a gradient multiplier, see ScaledGradFusedEBC).

So on CUDA the step can be captured once as a CUDA graph and replayed: the host then issues one
graph launch (plus the copy of the batch's row indices) per step instead of hundreds of kernels.
The first WARMUP_STEPS steps run eagerly (on a side stream, as capture requires); they are real
training steps. Steps that must not be replayed run eagerly, and result.json says which and why:
- a short last batch of an epoch (another shape);
- with a learning-rate schedule and tables trained by Adagrad or row-wise Adagrad: FBGEMM reads
  those kernels' learning rate on the host at launch, so a graph holds the lr it was captured
  with. A graph is captured for an lr that holds for two consecutive steps (the constant phase)
  and replayed while it holds; warmup and decay steps run eagerly.
- Adam tables never replay: FBGEMM passes Adam's step count (its bias correction) from the host.

Data: with `data_on_device` the whole train split is held in device memory (ids already hashed);
each epoch's row order (the loader's shuffle, exactly) is uploaded once per epoch (the stretches
between evaluations and checkpoints reuse it) and a batch is three index_selects, inside the
graph. Otherwise batches come from the loader's prefetch thread in pinned memory; on CUDA a copy
stream moves batch i+1 to the device while step i runs, into one of two staging buffers, and the
step copies it into the graph's static inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsearch.data.loader import FEATURE_NAMES, NpyBatchLoader
from recsearch.model.dlrm import EBC_MODULE_PATH, ScaledGradFusedEBC, build_model, compile_dense_parts, init_model_tables, user_model
from recsearch.model.factory import replace_module
from recsearch.train.config import TrainConfig
from recsearch.train import placement_file
from recsearch.train.dispatch import OpCounter
from recsearch.train.engine_report import EngineReport
from recsearch.train.optim import dense_optimizer, embedding_optimizer
from recsearch.train.schedule import LRSchedule, apply_lr
from recsearch.types import ArchSpec

WARMUP_STEPS = 3  # eager steps before the capture (lazy initialisation, cuBLAS workspaces, ...)
MAX_GRAPHS = 2  # distinct host-side lrs captured (tables whose kernels read the lr on the host)
# data_on_device=auto: the split must fit in this share of the device memory left after the model
DEVICE_DATA_SHARE = 0.5


def fused_model(
    arch: ArchSpec, rows: list[int], device: torch.device,
    fused_optimizer: tuple[type[torch.optim.Optimizer], dict[str, Any]],
    embedding_precision: str = "fp32", dense_precision: str = "fp32",
    model: str | None = None, model_args: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, str]:
    """The model a run trains on one device, and its collection's attribute path: the built-in
    DLRM of `arch` (`model` None), or a model of the user's own (the factory `model` called with
    `model_args` over one `arch.embedding_dim`-wide table per feature). Its tables are one FBGEMM
    collection on `device` applying `fused_optimizer` in its backward; everything else is built on
    the CPU, from the CPU random stream the caller seeded, and moved to `device`. The trainer builds
    its latency reference here too, so the reference is served as the run's own model is."""
    if model is None:
        built = build_model(
            arch, rows, device=device, embedding_dtype=embedding_precision, dense_dtype=dense_precision,
            compute_device_type=device.type, fused_optimizer=fused_optimizer,
        )
        return built, EBC_MODULE_PATH
    # a user's model: its tables (built on meta) become one fused FBGEMM collection here
    built, ebc_path = user_model(model, model_args or {}, rows, arch.embedding_dim, embedding_precision)
    configs = list(built.get_submodule(ebc_path).embedding_bag_configs())
    with torch.random.fork_rng(devices=[]):  # its throwaway init must not shift later draws
        fused = ScaledGradFusedEBC(configs, *fused_optimizer, device=device)
    replace_module(built, ebc_path, fused)
    return built.to(device), ebc_path


class SingleDeviceEngine:
    """See the module docstring."""

    def __init__(self, cfg: TrainConfig, rows: list[int], device: torch.device, train_loader: NpyBatchLoader):
        hp = cfg.hparams
        self.device = device
        self.batch_size = hp.batch_size
        self.train_loader = train_loader
        self.hotness = tuple(train_loader.hotness)
        # each feature's columns in a multi-hot id row: (first, stop)
        stops = np.cumsum(self.hotness).tolist()
        self._feature_columns = list(zip([0, *stops[:-1]], stops))
        torch.manual_seed(hp.seed)  # the dense layers' initial weights (the tables': init_model_tables)
        model, ebc_path = fused_model(
            cfg.arch, rows, device, embedding_optimizer(hp.embedding_optimizer, hp.embedding_lr, device.type),
            cfg.embedding_precision, cfg.dense_precision, cfg.model, cfg.model_args,
        )
        tables = list(model.get_submodule(ebc_path).embedding_bag_configs())
        elsewhere = sorted({str(t.device) for t in [*model.parameters(), *model.buffers()] if t.device.type != device.type})
        if elsewhere:  # a tensor on another device would make every step copy (and wait)
            raise RuntimeError(f"single engine: model tensors on {elsewhere}, not only on {device}")
        # a placement file still has to name this model's tables (placer names need no check)
        placement_file.check_plan_setting(cfg.plan, [t.name for t in tables], world_size=1)
        init_model_tables(model, tables, hp.seed)
        if cfg.compile_dense:
            compile_dense_parts(model)
        self.model = model
        self._ebc = model.get_submodule(ebc_path)
        self._tbes = self._ebc.tbe_modules()
        dense = {n: p for n, p in model.named_parameters() if ".embedding_bags." not in n}
        self._dense_params = list(dense.values())
        self._dense_opt = dense_optimizer(hp.dense_optimizer, self._dense_params, hp.dense_lr)
        dense_wrapper = KeyedOptimizerWrapper(dense, lambda _params: self._dense_opt)
        self.optimizer = CombinedOptimizer([self._ebc.fused_optimizer(), dense_wrapper])
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._embedding_lr = hp.embedding_lr
        schedule = LRSchedule(hp.warmup_steps, hp.decay_start_step, hp.decay_steps)
        scheduled = bool(schedule.warmup_steps or schedule.decay_steps)
        if scheduled and hp.embedding_optimizer == "sgd":
            self._ebc.grad_scale = torch.ones((), device=device)
        # Without SGD's gradient multiplier, a graph holds the tables' lr it was captured with.
        self._lr_in_graph = self._ebc.grad_scale is None
        self._multiplier = 1.0
        self._previous_multiplier = float("nan")
        self._loss_sum = torch.zeros((), device=device)
        self._kjt_parts: dict[int, tuple[torch.Tensor, torch.Tensor, list[int], list[int]]] = {}

        self.report = EngineReport(engine="single")
        self._graph_reason = self._why_no_graph(cfg, hp.embedding_optimizer)
        self.report.cuda_graph_note = self._graph_reason or ""
        self._use_graph = self._graph_reason is None
        self._graphs: dict[float | None, torch.cuda.CUDAGraph] = {}
        self._graph_pool = None
        self._eager_notes: set[str] = set()
        self._side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

        self._resident = self._decide_data_on_device(cfg.data_on_device)
        self.report.data_on_device = self._resident
        if self._resident:
            dense_np, ids_np, labels_np = train_loader.resident_arrays()
            self._dense_all = torch.from_numpy(dense_np).to(device)
            self._labels_all = torch.from_numpy(labels_np).to(device)
            # one-hot: ids stored feature-major [26, N], so one index_select gives the KJT's values
            ids = torch.from_numpy(ids_np)
            self._ids_all = (ids.t().contiguous() if self._one_hot else ids).to(device)
            self._rows_static = torch.zeros(self.batch_size, dtype=torch.int64, device=device)
        else:
            width = sum(self.hotness) * self.batch_size
            self._static = (
                torch.zeros(self.batch_size, 13, device=device),
                torch.zeros(width, dtype=train_loader.values_dtype, device=device),
                torch.zeros(self.batch_size, device=device),
            )
            self._copier = _CopyStream(device, self._static) if device.type == "cuda" else None
        # the epoch's row order on the device, kept while the epoch lasts: the stretches between
        # evaluations and checkpoints of one epoch share it (uploaded once per epoch, not per stretch)
        self._order: torch.Tensor | None = None
        self._order_epoch: int | None = None
        self._batches: Iterator[Batch] | None = None
        self._next_batch: Batch | None = None
        self._batch_index = 0
        self._epoch_rows = 0
        self._data_wait = 0.0
        self._steps_taken = 0

    # ---- decisions ---------------------------------------------------------------------------------
    @property
    def _one_hot(self) -> bool:
        return all(h == 1 for h in self.hotness)

    def _why_no_graph(self, cfg: TrainConfig, embedding_optimizer_name: str) -> str | None:
        """None if the step will be captured, else why not (said in the log and result.json)."""
        if cfg.cuda_graph == "false":
            return "cuda_graph=false"
        if self.device.type != "cuda":
            if cfg.cuda_graph == "true":
                raise ValueError("cuda_graph=true needs a CUDA device (this run is on the CPU)")
            return "CUDA graphs need a CUDA device"
        if embedding_optimizer_name == "adam":
            reason = (
                "embedding_optimizer=adam: FBGEMM passes Adam's step count from the host, so a "
                "replayed graph would freeze its bias correction"
            )
            if cfg.cuda_graph == "true":
                raise ValueError(f"cuda_graph=true is not possible: {reason}")
            return reason
        return None

    def _decide_data_on_device(self, setting: str) -> bool:
        loader = self.train_loader
        if setting == "false":
            return False
        if setting == "true":
            if not loader.in_memory:
                raise ValueError("data_on_device=true needs the train split in host memory first (it does not fit)")
            return True
        if self.device.type != "cuda" or not loader.in_memory:
            return False
        dense, ids, labels = loader.resident_arrays()
        free_bytes, _total = torch.cuda.mem_get_info(self.device)
        return dense.nbytes + ids.nbytes + labels.nbytes + 8 * len(labels) < DEVICE_DATA_SHARE * free_bytes

    # ---- the engine contract -------------------------------------------------------------------------
    def set_lr_multiplier(self, multiplier: float) -> None:
        apply_lr(self.optimizer, self._base_lrs, multiplier)  # the param groups (logged, checkpointed)
        self._dense_opt.sync_lr()
        if self._ebc.grad_scale is not None:
            self._ebc.grad_scale.fill_(multiplier)  # the tables' lr stays the base lr (see above)
        else:
            for tbe in self._tbes:
                tbe.set_learning_rate(self._embedding_lr * multiplier)
        self._multiplier = multiplier

    def start_stretch(self, epoch: int, start_batch: int) -> None:
        loader = self.train_loader
        loader.set_epoch(epoch)
        self._batch_index = start_batch
        self._data_wait = 0.0
        if self._resident:
            if self._order is None or self._order_epoch != epoch:
                self._order = None  # the previous epoch's order is freed before the next is built
                rows = loader.epoch_rows(epoch)
                self._order = torch.from_numpy(rows).to(self.device, non_blocking=False)
                self._order_epoch = epoch
            self._epoch_rows = len(self._order)
        else:
            self._batches = loader.iter_from(start_batch)
            self._next_batch = self._fetch()
            self._prefetch_if_full(self._next_batch)

    def step(self) -> int | None:
        if self._resident:
            start = self._batch_index * self.batch_size
            if start >= self._epoch_rows:
                return None
            rows = min(self.batch_size, self._epoch_rows - start)
            assert self._order is not None
            if rows == self.batch_size:
                self._rows_static.copy_(self._order[start : start + rows])
                self._run_step(lambda: self._train_step(*self._gather(self._rows_static)))
            else:
                self._run_eager(lambda: self._train_step(*self._gather(self._order[start : start + rows])), short_batch=True)
        else:
            batch = self._next_batch
            if batch is None:
                return None
            rows = int(batch.labels.numel())
            self._next_batch = self._fetch()
            if self._copier is None:  # CPU: the loader's tensors are already where the step runs
                self._run_eager(lambda: self._train_step(batch.dense_features, batch.sparse_features.values(), batch.labels))
            elif rows == self.batch_size:
                self._copier.deliver()  # batch -> the static inputs (it was copied while the last step ran)
                self._prefetch_if_full(self._next_batch)
                self._run_step(lambda: self._train_step(*self._static))
            else:
                moved = batch.to(self.device, non_blocking=True)
                self._run_eager(lambda: self._train_step(moved.dense_features, moved.sparse_features.values(), moved.labels), short_batch=True)
                self._prefetch_if_full(self._next_batch)
        self._batch_index += 1
        return rows

    def take_loss_sum(self) -> float:
        total = float(self._loss_sum)
        self._loss_sum.zero_()
        return total

    def end_stretch(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        close = getattr(self._batches, "close", None)
        if close:
            close()
        self._batches = self._next_batch = None
        if self._eager_notes and self._use_graph:
            self.report.cuda_graph_note = "; ".join(sorted(self._eager_notes))
        return self._data_wait

    def plan_summary(self) -> dict[str, dict[str, object]]:
        return {
            c.name: {"sharding_type": "single_device", "ranks": [0], "compute_kernel": "fused"}
            for c in self._ebc.embedding_bag_configs()
        }

    # ---- one step ------------------------------------------------------------------------------------
    def _train_step(self, dense: torch.Tensor, values: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward, backward (the tables update inside it), dense update, loss sum: device work only."""
        rows = labels.shape[0]
        lengths, offsets, length_per_key, offset_per_key = self._kjt_shape(rows)
        features = KeyedJaggedTensor(
            keys=list(FEATURE_NAMES), values=values, lengths=lengths, offsets=offsets, stride=rows,
            length_per_key=length_per_key, offset_per_key=offset_per_key,
        )
        grads = [p.grad for p in self._dense_params if p.grad is not None]
        if grads:  # in place, so a captured graph keeps writing the same gradient buffers
            torch._foreach_zero_(grads)
        loss, _ = self.model(Batch(dense_features=dense, sparse_features=features, labels=labels))
        loss.backward()
        self._dense_opt.update()
        self._loss_sum.add_(loss.detach())

    def _gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of these rows from the device-resident split, ids in the KJT's key-major order."""
        dense = self._dense_all.index_select(0, rows)
        labels = self._labels_all.index_select(0, rows)
        if self._one_hot:
            values = self._ids_all.index_select(1, rows).reshape(-1)
        else:
            ids = self._ids_all.index_select(0, rows)
            values = torch.cat([ids[:, a:b].reshape(-1) for a, b in self._feature_columns])
        return dense, values, labels

    def _kjt_shape(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        parts = self._kjt_parts.get(rows)
        if parts is None:  # built once per batch size, on the host, like the loader's
            lengths = np.repeat(np.asarray(self.hotness, np.int32), rows)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            length_per_key = [h * rows for h in self.hotness]
            offset_per_key = [0, *np.cumsum(length_per_key).tolist()]
            parts = (
                torch.from_numpy(lengths).to(self.device),
                torch.from_numpy(offsets).to(self.device),
                length_per_key,
                offset_per_key,
            )
            self._kjt_parts[rows] = parts
        return parts

    # ---- eager or graphed ------------------------------------------------------------------------------
    def _run_step(self, step_fn: Callable[[], None]) -> None:
        """A full-size step: replayed from a graph when one fits, captured when due, else eager."""
        key = self._multiplier if self._lr_in_graph else None
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            self._count(graphed=True)
        elif self._use_graph and self._steps_taken >= WARMUP_STEPS and self._capturable_now(key):
            self._capture(key, step_fn)
        else:
            if self._use_graph and self._steps_taken >= WARMUP_STEPS:
                self._eager_notes.add(
                    "steps whose learning rate differed from the captured ones ran eagerly "
                    "(Adagrad-family tables: FBGEMM reads their lr on the host at launch)"
                )
            self._run_eager(step_fn)
        self._previous_multiplier = self._multiplier

    def _capturable_now(self, key: float | None) -> bool:
        if key is None:
            return True
        # a host-side lr: capture one that holds for two steps running, a few at most
        return self._multiplier == self._previous_multiplier and len(self._graphs) < MAX_GRAPHS

    def _capture(self, key: float | None, step_fn: Callable[[], None]) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph, pool=self._graph_pool):
                step_fn()
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager steps
            torch.cuda.synchronize(self.device)
            self._use_graph = False
            self._graph_reason = f"capture failed ({type(err).__name__}: {str(err)[:300]})"
            self.report.cuda_graph_note = self._graph_reason
            self._run_eager(step_fn)
            return
        self._graph_pool = graph.pool()
        self._graphs[key] = graph
        graph.replay()  # capturing ran nothing: this step's work happens now
        self.report.cuda_graph = True
        self._count(graphed=True)

    def _run_eager(self, step_fn: Callable[[], None], short_batch: bool = False) -> None:
        if short_batch and self._use_graph:
            self._eager_notes.add("the short last batch of an epoch ran eagerly")
        counter = OpCounter() if self.report.ops_in_step is None and self._steps_taken >= 1 else None
        if self._side_stream is not None and self._use_graph:
            # eager steps of a run that captures go on a side stream, as capture requires
            self._side_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side_stream):
                self._eager(step_fn, counter)
            torch.cuda.current_stream(self.device).wait_stream(self._side_stream)
        else:
            self._eager(step_fn, counter)
        if counter is not None:
            self.report.ops_in_step = counter.total
        self._count(graphed=False)

    @staticmethod
    def _eager(step_fn: Callable[[], None], counter: OpCounter | None) -> None:
        if counter is None:
            step_fn()
        else:
            with counter:
                step_fn()

    def _count(self, graphed: bool) -> None:
        self._steps_taken += 1
        if graphed:
            self.report.graphed_steps += 1
        else:
            self.report.eager_steps += 1

    def _prefetch_if_full(self, batch: Batch | None) -> None:
        """Start copying a full-size batch towards the static inputs (short ones go eagerly)."""
        if self._copier is not None and batch is not None and batch.labels.numel() == self.batch_size:
            self._copier.prefetch(batch)

    def _fetch(self) -> Batch | None:
        assert self._batches is not None
        start = time.perf_counter()
        try:
            return next(self._batches)
        except StopIteration:
            return None
        finally:
            self._data_wait += time.perf_counter() - start


class _CopyStream:
    """Host batches to a graph's static inputs: batch i+1 is copied from pinned memory into one of
    two staging buffers on a copy stream while step i runs; `deliver` makes the compute stream
    wait for it and copies it (device to device) into the static inputs."""

    def __init__(self, device: torch.device, static: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        self.device = device
        self.static = static
        self.stream = torch.cuda.Stream(device)
        self.staging = [tuple(torch.empty_like(t) for t in static) for _ in range(2)]
        self.ready = [torch.cuda.Event(), torch.cuda.Event()]
        self.free = [torch.cuda.Event(), torch.cuda.Event()]
        self._slot = 0  # the slot the next prefetch writes
        self._pending: int | None = None

    def prefetch(self, batch: Batch) -> None:
        slot = self._slot
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.free[slot])  # its previous batch has been delivered
            sources = (batch.dense_features, batch.sparse_features.values(), batch.labels)
            for target, source in zip(self.staging[slot], sources, strict=True):
                target.copy_(source, non_blocking=True)
            self.ready[slot].record(self.stream)
        self._pending = slot
        self._slot = 1 - slot

    def deliver(self) -> None:
        slot = self._pending
        assert slot is not None, "deliver() without a prefetched batch"
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(self.ready[slot])
        for target, source in zip(self.static, self.staging[slot], strict=True):
            target.copy_(source, non_blocking=True)
        self.free[slot].record(compute)
        self._pending = None
