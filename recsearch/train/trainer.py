"""The trainer: one DLRM training run, start to finish. The only code that runs training steps.

`recsearch train --config configs/train/<name>.yaml [key=value ...]`, in one process or under
`torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU).

Top to bottom: process group -> data loaders -> engine (the model, its optimizers and its step:
`single` on one device, one CUDA graph per step on a GPU; `pipeline` = DistributedModelParallel +
TrainPipelineSparseDist over several ranks; see recsearch.train.engine) -> train with LR schedule,
periodic eval, checkpoints and early stops -> final eval (eval_splits) -> inference latency ->
result.json (the only thing a search reads) and TensorBoard.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from recsearch import config, logs, remote
from recsearch.signals import interrupt_exit_code, interrupt_name, interrupts_deferred, sigterm_as_interrupt
from recsearch.data.dataset import dataset_meta
from recsearch.data.layout import DatasetMeta
from recsearch.data.loader import NpyBatchLoader
from recsearch.data.split_cache import SplitCache
from recsearch.model.dlrm import compile_dense_parts, dense_parameter_count, table_rows
from recsearch.train import checkpoint, placement_file
from recsearch.train.config import TrainConfig
from recsearch.train.dispatch import OpCounter
from recsearch.train.engine import TrainEngine, make_engine
from recsearch.train.latency import SERVING_SETUP, DeviceLock, measure_interleaved
from recsearch.train.latency import graphed as latency_graphed
from recsearch.train.memory_fit import memory_room, tables_memory_problem
from recsearch.train.metrics import MetricAccumulator
from recsearch.train.optim import embedding_optimizer
from recsearch.train.progress import ProgressFile
from recsearch.train.schedule import LRSchedule
from recsearch.train.single_engine import fused_model
from recsearch.train.result import LatencyEntry, SplitMetrics, TrainResult
from recsearch.train.run_dir import RunDirInUse, finished_status, prepare_fresh_run
from recsearch.types import RESULT_FILE

__all__ = ["TrainConfig", "compile_dense_parts", "main", "train"]

# The step of a run (counted from its start or resume) whose dispatched ops result.json reports:
# past the single engine's eager warm-up and graph capture, a steady step.
OPS_COUNT_STEP = 8
CALLS_PER_ROUND = 3  # timed calls per model in a round: fine interleaving, so a transient hits both models


@dataclass
class RunState:
    """What the loop tracks; everything a checkpoint needs besides model and optimizer."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    status: str = "running"  # -> completed | early_stopped | diverged | failed
    last_loss: float = math.nan
    val_auc: float | None = None  # the latest periodic evaluation's (a checkpoint after it keeps it)
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    cfg: TrainConfig, *, split_cache: SplitCache | None = None, on_training_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Run one training job in this process (one rank of it under torchrun); return the result.
    `split_cache`: in-memory splits kept across the runs of one process (the search's pool
    workers), so a run on data an earlier run loaded reads nothing again. `on_training_start`:
    called once setup (data, model, a resume's checkpoint) is done, before the first step."""
    device = init_distributed(cfg.device)
    placement_file.check_plan_exists(cfg.plan)  # a mistyped placer name fails before the data is read
    if cfg.latency_cuda_graph == "true" and cfg.latency_batch_sizes and device.type != "cuda":
        raise ValueError("latency_cuda_graph=true needs a CUDA device (this run is on the CPU)")
    if device.type == "cuda":  # set every run: a pool worker's previous trial may have capped it
        torch.cuda.set_per_process_memory_fraction(cfg.device_memory_fraction or 1.0, device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"output_dir {out}: cannot create it ({type(err).__name__}: {err})") from err
    if cfg.resume_from == "auto":  # a job that may be retried or requeued: it continues its own run, if any
        has_checkpoint = checkpoint.latest_named(out) is not None
        cfg = dataclasses.replace(cfg, resume_from="latest" if has_checkpoint else None)
    if cfg.resume_from is None:
        prepare_fresh_run(out, cfg.overwrite_output, rank)  # another run's work there: refused or cleared
    # progress.json for watchers (the search's stall detector): rewritten at most every 5 s while
    # the run works, by rank 0 (recsearch.train.progress); its last word says how the run ended
    progress = ProgressFile(out if rank == 0 else None)
    progress.beat("setup", 0)
    try:
        result = _train(cfg, rank, world_size, device, out, progress, split_cache, on_training_start)
    except BaseException:
        progress.end("stopped")
        raise
    progress.end(result.status)
    return result


def _train(
    cfg: TrainConfig, rank: int, world_size: int, device: torch.device, out: Path, progress: ProgressFile,
    split_cache: SplitCache | None, on_training_start: Callable[[], None] | None,
) -> TrainResult:
    """train() once the output folder is ready."""
    hp = cfg.hparams

    meta = dataset_meta(cfg.data_dir, cfg.num_embeddings_per_feature)
    rows = table_rows(meta.num_embeddings_per_feature, cfg.max_rows_per_table)
    # before anything is allocated: tables that cannot fit (raw 32-bit ids, no cap) are refused
    # here, not killed by the OOM killer while FBGEMM initialises them (memory_fit module doc)
    too_big = tables_memory_problem(rows, cfg.arch.embedding_dim, cfg.embedding_precision, hp.embedding_optimizer,
                                    memory_room(device, world_size, cfg.device_memory_fraction))
    if too_big:
        raise ValueError(too_big)

    eval_loaders: dict[tuple, NpyBatchLoader] = {}  # built once: an in-memory split is read once

    def loader(
        split: str, shuffle: bool, max_rows: int | None, batch_size: int = hp.batch_size,
        in_memory: bool | None = None, every_row: bool = False,
    ) -> NpyBatchLoader:
        """every_row: an evaluation's loader, each row of the split exactly once on any number of
        ranks (the last round padded; NpyBatchLoader.real_rows says which rows count)."""
        key = (split, shuffle, max_rows, batch_size, in_memory, every_row)
        if split != "train" and key in eval_loaders:
            return eval_loaders[key]
        made = NpyBatchLoader(
            cfg.data_dir, split, batch_size, rank=rank, world_size=world_size, shuffle=shuffle,
            seed=hp.seed, num_embeddings_per_feature=rows, max_rows=max_rows,
            prefetch_batches=cfg.prefetch_batches, pin_memory=device.type == "cuda", meta=meta,
            in_memory=in_memory, split_cache=split_cache, pad_last_round=every_row,
        )
        if split != "train":
            eval_loaders[key] = made
        return made

    train_loader = loader("train", True, cfg.train_rows)
    if len(train_loader) == 0:
        raise ValueError(
            f"no training batch: {train_loader.num_rows} train rows < batch {hp.batch_size} x {world_size} ranks"
        )
    # every split the run will evaluate, opened now (the loaders are kept): an empty one fails
    # here, not after the whole run has trained
    for split in dict.fromkeys((*(("val",) if cfg.eval_every_steps else ()), *cfg.eval_splits)):
        loader(split, False, cfg.eval_rows, every_row=True)

    progress.beat("setup", 0)
    engine = make_engine(cfg, rows, device, world_size, train_loader)
    progress.beat("setup", 0)
    schedule = LRSchedule(hp.warmup_steps, hp.decay_start_step, hp.decay_steps)

    writer: SummaryWriter | None = None
    # Training holds it shared, window by window; the latency measurement holds it exclusive.
    # Not over several ranks: their collective forwards would wait on each other's exclusive hold.
    device_lock = DeviceLock(cfg.device_lock if world_size == 1 else None)
    try:  # the writer's thread is joined however the run ends
        # What the loop state's data position counts in: a resume with another order is refused.
        data_order = {"hparams.batch_size": hp.batch_size, "hparams.seed": hp.seed, "train_rows": train_loader.num_rows,
                      **dataset_identity(meta)}
        state = RunState()
        if cfg.resume_from is not None:
            restored = checkpoint.load(checkpoint.resolve(cfg.resume_from, out), engine.model, engine.optimizer, data_order)
            state = RunState(**restored)
            state.status = _resumed_status(state, cfg.auc_threshold)
            _log(rank, f"resumed from {cfg.resume_from} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})"
                 + (f"; val AUC {state.val_auc:.4f} had reached auc_threshold there" if state.status == "early_stopped" else ""))
        if cfg.tensorboard and rank == 0:
            # a resumed run rewrites the steps after its checkpoint: their events from before are dropped
            writer = SummaryWriter(str(out / "tb"), purge_step=state.step + 1 if cfg.resume_from is not None else None)
        # epochs and max_steps: whichever ends first (every epoch is len(train_loader) steps)
        max_steps = cfg.epochs * len(train_loader)
        capped = ""
        if cfg.max_steps is not None:
            if max_steps < cfg.max_steps:
                capped = f" (epochs={cfg.epochs} of {len(train_loader)} steps end it before max_steps={cfg.max_steps})"
            max_steps = min(max_steps, cfg.max_steps)
        val_metrics: SplitMetrics | None = None
        report = engine.report
        graph_note = "CUDA graph per step" if report.cuda_graph_note == "" else f"no CUDA graph: {report.cuda_graph_note}"
        _log(
            rank,
            f"training {max_steps} steps{capped} of {hp.batch_size} x {world_size} ranks on {device}; engine {report.engine}"
            + (f" ({graph_note}; data on {'the device' if report.data_on_device else 'the host'})" if report.engine == "single" else f"; plan {cfg.plan}"),
        )
        steps_this_run = 0
        if on_training_start is not None:
            on_training_start()

        while state.step < max_steps and state.status == "running":
            # One stretch of training: until the epoch ends, max_steps, or an evaluation is due.
            stretch_end = max_steps
            for every in (cfg.eval_every_steps, cfg.checkpoint_every_steps):
                if every:
                    stretch_end = min(stretch_end, (state.step // every + 1) * every)
            started = time.perf_counter()
            engine.start_stretch(state.epoch, state.batch_in_epoch)
            window = _LossWindow()
            lr_multiplier = math.nan  # set at the stretch's first step, then only when it changes
            while state.step < stretch_end:
                if (multiplier := schedule.multiplier(state.step)) != lr_multiplier:
                    engine.set_lr_multiplier(multiplier)
                    lr_multiplier = multiplier
                steps_this_run += 1
                device_lock.hold_shared()  # a no-op inside a window; waits while latency is timed
                if steps_this_run == OPS_COUNT_STEP:
                    with OpCounter() as counter:
                        samples = engine.step()
                    report.ops_per_step = counter.total
                else:
                    samples = engine.step()
                if samples is None:  # end of the epoch
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    break
                state.step += 1
                state.batch_in_epoch += 1
                state.samples += samples
                window.add(samples)
                progress.beat("train", state.step)
                log_due = state.step % cfg.log_every_steps == 0
                if log_due:
                    logged = _log_window(window, engine, state, writer, rank, max_steps)
                    device_lock.release()  # the window's loss read-back waited for the device
                    if not logged:
                        break  # diverged
                elif device_lock.measurement_waiting():  # another trial times its latency: let it now
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)  # the window's work is done before the release
                    device_lock.release()
            # Whatever ended the stretch (an evaluation, the epoch's end), the steps since the last log
            # are logged and checked too: a divergence is caught at the first stretch end after it.
            if window.steps and state.status == "running":
                _log_window(window, engine, state, writer, rank, max_steps)
            state.data_wait_seconds += engine.end_stretch()  # waits for the device
            device_lock.release()
            state.train_seconds += time.perf_counter() - started
            if state.status != "running":
                break
            if state.batch_in_epoch >= len(train_loader):
                state.epoch += 1
                state.batch_in_epoch = 0
            # The evaluation due at this step runs before the checkpoint of this step, which then
            # holds its outcome: a run killed in between resumes past a finished evaluation (and
            # an early stop it decided), not before one it would never run again.
            due = cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0 and state.step < max_steps
            if due:
                with device_lock.shared():
                    val_metrics = evaluate(engine.model, loader("val", False, cfg.eval_rows, every_row=True), device,
                                           beat=lambda: progress.beat("evaluate", state.step))
                state.val_auc = val_metrics.auc
                _log(rank, f"step {state.step}: val AUC {val_metrics.auc:.4f} log loss {val_metrics.log_loss:.4f}")
                if writer:
                    _write_eval(writer, "val", val_metrics, state.step)
                if cfg.auc_threshold is not None and val_metrics.auc >= cfg.auc_threshold:
                    state.status = "early_stopped"
            if cfg.checkpoint_every_steps and (state.step % cfg.checkpoint_every_steps == 0 or state.step >= max_steps):
                with interrupts_deferred():  # a stop during the save lands after it: the checkpoint is whole
                    checkpoint.save(out, state.step, engine.model, engine.optimizer, dataclasses.asdict(state), data_order)
                progress.beat("checkpoint", state.step)
            if state.epoch >= cfg.epochs:
                break
        if state.status == "running":
            state.status = "completed"
        if report.engine == "single":
            graphed = f"{report.graphed_steps} steps replayed a CUDA graph, {report.eager_steps} ran eagerly"
            _log(rank, graphed + (f" ({report.cuda_graph_note})" if report.cuda_graph_note else ""))

        model = engine.model
        final: dict[str, SplitMetrics] = {}
        latency: dict[str, LatencyEntry] = {}
        latency_notes: list[str] = []
        reference_parameters: int | None = None  # the dense parameters of the latency reference timed
        if state.status != "diverged":
            for split in cfg.eval_splits:
                with device_lock.shared():
                    final[split] = evaluate(model, loader(split, False, cfg.eval_rows, every_row=True), device,
                                            beat=lambda: progress.beat("evaluate", state.step))
                if writer:
                    _write_eval(writer, split, final[split], state.step)
            if cfg.latency_batch_sizes:
                reference = _latency_reference_model(cfg, rows, device, report.engine)
                if reference is not None:
                    reference_parameters = dense_parameter_count(reference)
                elif cfg.latency_reference is not None:
                    latency_notes.append(f"latency_reference not timed: the {report.engine} engine's forward is "
                                         "collective (sharded tables); a reference is timed beside a single-engine run")
                latency = measure_latency(model, cfg, loader, device, reference, device_lock, latency_notes,
                                          beat=lambda: progress.beat("latency", state.step))
        result = _result(cfg, meta, state, final, latency, engine, world_size, device, latency_notes, reference_parameters)
        if writer and cfg.tensorboard_hparams:
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in _flat(config.to_dict(cfg)).items()
                       if v is not None and k.startswith(HPARAM_KEYS)}  # the model and its training, no paths
            metrics = {f"final/{s}_{k}": getattr(m, k) for s, m in final.items() for k in ("auc", "log_loss", "ne", "accuracy")}
            writer.add_hparams(hparams, metrics or {"final/diverged": 1.0}, run_name="hparams")
        if writer:
            writer.close()
        if rank == 0:
            write_result(out, result)
            error = upload_outputs(cfg, out)
            if error:  # the run's own result.json stays as it is; the exit code says it
                result = dataclasses.replace(result, upload_error=error)
        return result
    finally:
        device_lock.close()
        if writer:
            writer.close()


def evaluate(
    model: torch.nn.Module, loader: NpyBatchLoader, device: torch.device, beat: Callable[[], None] | None = None,
) -> SplitMetrics:
    """Metrics of the model on a split (every rank takes part: the model's forward is collective).
    Only each batch's real rows count (`loader.real_rows`): with a loader that pads its last round
    (pad_last_round) every row of the split is scored exactly once, whatever the batch size and
    the number of ranks. `beat`: called after every batch (the run's progress file)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(device)
    with torch.no_grad():
        for local_batch, batch in enumerate(loader):
            real_rows = loader.real_rows(local_batch)
            batch = batch.to(device, non_blocking=True)
            _, (_, logits, labels) = model(batch)
            acc.update(logits.reshape(-1)[:real_rows], labels.reshape(-1)[:real_rows])
            if beat is not None:
                beat()
    model.train(was_training)
    return acc.compute()


def measure_latency(
    model, cfg: TrainConfig, make_loader, device: torch.device, reference=None, device_lock: DeviceLock | None = None,
    notes: list[str] | None = None, beat: Callable[[], None] | None = None,
) -> dict[str, LatencyEntry]:
    """p50/p99 ms of the trained model's forward at each serving batch size, on this device, with
    the device to itself (`device_lock` held exclusive) and, with a reference model, the
    reference's p50 timed in the same rounds (recsearch.train.latency). On CUDA the forward is
    timed as CUDA graph replays (cfg.latency_cuda_graph); why it was not, if it was not, is
    appended to `notes`. `beat`: called before each batch size's measurement (the run's progress
    file; one is bounded by cfg.latency_max_seconds)."""
    out: dict[str, LatencyEntry] = {}
    lock = device_lock or DeviceLock(None)
    use_graph = device.type == "cuda" and cfg.latency_cuda_graph != "false"
    notes = notes if notes is not None else []
    models = {"model": model, **({"reference": reference} if reference is not None else {})}
    for m in models.values():
        m.eval()
    rounds = -(-cfg.latency_iters // CALLS_PER_ROUND)
    # A sharded model's forward is collective: every rank must time the same number of calls, so
    # over several ranks the rounds are fixed instead of stopping at the spread target or time cap.
    lockstep = dist.is_initialized() and dist.get_world_size() > 1
    with torch.no_grad(), lock.exclusive():
        for batch_size in cfg.latency_batch_sizes:
            if beat is not None:
                beat()
            batches = None
            try:
                # one batch from the memory map: no need to load the whole split for it
                test_loader = make_loader("test", False, None, batch_size, in_memory=False)
                if test_loader.num_rows < batch_size or len(test_loader) == 0:
                    # a short batch would time another batch size than the one reported
                    ranks = f" x {test_loader.world_size} ranks" if test_loader.world_size > 1 else ""
                    notes.append(f"latency at batch {batch_size} skipped: the test split has {test_loader.num_rows} rows, "
                                 f"fewer than one batch of {batch_size}{ranks}")
                    continue
                batches = iter(test_loader)
                batch = next(batches)
            except ValueError as err:  # no test split to draw from
                notes.append(f"latency at batch {batch_size} skipped: {err}")
                continue
            finally:
                close = getattr(batches, "close", None)
                if close:  # the prefetch thread stops before the timing starts
                    close()
            batch = batch.to(device)
            calls = {name: (lambda m=m: m(batch)) for name, m in models.items()}
            graphed = False
            if use_graph:
                try:
                    calls = {name: latency_graphed(call, device) for name, call in calls.items()}
                    graphed = True
                except Exception as err:  # noqa: BLE001 - auto: any capture failure times the eager forward
                    if cfg.latency_cuda_graph == "true":
                        raise
                    torch.cuda.synchronize(device)
                    use_graph = False
                    notes.append(f"CUDA graph capture failed at batch {batch_size} ({type(err).__name__}: "
                                 f"{str(err)[:200]}); timed eagerly")
            stats = measure_interleaved(calls, device,
                target_spread=cfg.latency_target_spread, max_seconds=cfg.latency_max_seconds,
                calls_per_round=CALLS_PER_ROUND, min_rounds=max(2, rounds),
                reference="reference" if reference is not None else None, lockstep=lockstep,
            )
            mine, ref = stats["model"], stats.get("reference")
            out[str(batch_size)] = LatencyEntry(
                p50_ms=mine.p50_ms, p99_ms=mine.p99_ms, spread=round(mine.spread, 5), calls=mine.calls,
                serving="cuda_graph" if graphed else "eager",
                reference_p50_ms=ref.p50_ms if ref else None,
                reference_spread=round(ref.spread, 5) if ref else None,
                vs_reference=mine.vs_reference,
                vs_reference_spread=round(mine.vs_reference_spread, 5) if mine.vs_reference_spread is not None else None,
            )
    model.train()
    return out


def _latency_reference_model(cfg: TrainConfig, rows: list[int], device: torch.device, engine: str) -> torch.nn.Module | None:
    """The run's latency reference (cfg.latency_reference) built as this run builds and serves its
    own model (recsearch.train.single_engine.fused_model: the built-in DLRM of its arch, or the
    user's factory at its model_args), or None: none asked for, or the model is sharded over ranks
    (its forward is collective; there is no like-for-like reference). Random weights: a forward's
    latency does not depend on them. The same fused table optimizer as this run's: FBGEMM's forward
    takes another, slower path for row-wise Adagrad tables than for SGD ones (measured 5-8% of a
    quickstart model's p50 on the CPU), which a ratio between the two would count as architecture."""
    ref = cfg.latency_reference
    if ref is None or engine != "single":
        return None
    optimizer = embedding_optimizer(cfg.hparams.embedding_optimizer, cfg.hparams.embedding_lr, device.type)
    with torch.random.fork_rng(devices=[]):  # the run's own random streams go on as without it
        model, _ = fused_model(ref.arch, rows, device, optimizer, ref.embedding_precision, ref.dense_precision,
                               ref.model, ref.model_args)
    return model


# ---- pieces ------------------------------------------------------------------------------------
def dataset_identity(meta: DatasetMeta) -> dict[str, object]:
    """What says which data a checkpoint was trained on (data_order keys, JSON values): the rows
    of each day, the tables' id ranges, the dense transform and the categorical mapping. Not the
    timing or path facts of meta.extra: the same data preprocessed again is the same data."""
    return {
        "data.day_rows": list(meta.day_rows),
        "data.num_embeddings_per_feature": list(meta.num_embeddings_per_feature),
        "data.multi_hot_sizes": list(meta.multi_hot_sizes) if meta.multi_hot_sizes is not None else None,
        "data.dense_transform": meta.dense_transform,
        "data.categorical": meta.extra.get("categorical"),
        "data.hash": meta.extra.get("hash"),
    }


def _resumed_status(state: RunState, auc_threshold: float | None) -> str:
    """The status a resumed run continues in: `early_stopped` when its checkpoint was written after
    a periodic evaluation that reached this run's auc_threshold (the run ends with the final
    evaluation, as it would have without the interruption), else `running`."""
    if state.status == "early_stopped" and auc_threshold is not None and state.val_auc is not None \
            and state.val_auc >= auc_threshold:
        return "early_stopped"
    return "running"


def init_distributed(device_pref: str) -> torch.device:
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend=backend)
        else:  # a plain single-process run: a world of one
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return device


class _LossWindow:
    """Steps and samples since the last log; the engine sums the losses on the device, so a
    window costs one host synchronisation, not one per step."""

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0  # over all ranks
        self.started = time.perf_counter()

    def add(self, samples: int) -> None:
        self.steps += 1
        self.samples += samples

    def reset(self) -> None:
        self.steps = 0
        self.samples = 0
        self.started = time.perf_counter()


def _log_window(
    window: _LossWindow, engine: TrainEngine, state: RunState, writer, rank: int, max_steps: int
) -> bool:
    """Record the window's mean loss and speed; mark the run diverged and return False on a
    non-finite loss."""
    mean_loss = engine.take_loss_sum() / window.steps
    state.last_loss = mean_loss
    if not math.isfinite(mean_loss):
        state.status = "diverged"
        _log(rank, f"step {state.step}: loss is {mean_loss}; stopping (diverged)")
        return False
    rate = window.samples / max(time.perf_counter() - window.started, 1e-9)
    # param_groups: the fused embedding optimizers' groups first, the dense optimizer's last.
    groups = engine.optimizer.param_groups
    lr_embedding, lr_dense = groups[0]["lr"], groups[-1]["lr"]
    state.history.append({"step": state.step, "loss": mean_loss, "samples_per_s": rate})
    if writer:
        writer.add_scalar("train/loss", mean_loss, state.step)
        writer.add_scalar("train/lr_embedding", lr_embedding, state.step)
        writer.add_scalar("train/lr_dense", lr_dense, state.step)
        writer.add_scalar("train/samples_per_s", rate, state.step)
    _log(rank, f"step {state.step}/{max_steps} loss {mean_loss:.4f} {rate:,.0f} samples/s")
    window.reset()
    return True


def _peak_memory_mb(device: torch.device) -> list[float]:
    if device.type == "cuda":
        mine = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gathered: list[float] = [0.0] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [round(x, 1) for x in gathered]


def _embedding_bytes(model: torch.nn.Module) -> list[int]:
    """Bytes of embedding weights each rank holds (its shards, in their storage dtype: fp16
    tables count half), gathered from all ranks. Optimizer state is not included."""
    mine = 0
    for name, tensor in model.state_dict().items():
        if ".embedding_bags." not in name:
            continue
        shards = tensor.local_shards() if hasattr(tensor, "local_shards") else None
        local = [s.tensor for s in shards] if shards is not None else [tensor]
        mine += sum(t.numel() * t.element_size() for t in local)
    gathered: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def _result(
    cfg, meta, state: RunState, final, latency, engine: TrainEngine, world_size, device, latency_notes=(),
    reference_parameters: int | None = None,
) -> TrainResult:
    step_ms = 1000 * state.train_seconds / state.step if state.step else math.nan
    model = engine.model
    return TrainResult(
        status=state.status,
        config=config.to_dict(cfg),
        metrics=dict(final),
        bayes={k: dataclasses.asdict(v) for k, v in meta.bayes.items()},
        steps=state.step,
        epochs_completed=state.epoch,
        samples=state.samples,
        last_loss=state.last_loss,
        train_seconds=round(state.train_seconds, 3),
        step_time_ms=round(step_ms, 3),
        samples_per_s=round(state.samples / state.train_seconds, 1) if state.train_seconds else math.nan,
        data_wait_fraction=round(state.data_wait_seconds / state.train_seconds, 4) if state.train_seconds else math.nan,
        latency_ms=latency,
        latency_setup={
            "serving": _serving_setup(latency),
            "batch_sizes": [int(b) for b in latency],
            "target_spread": cfg.latency_target_spread,
            "device_to_itself": cfg.device_lock is not None and world_size == 1,
            "notes": list(latency_notes),
            # the reference timed beside the model (its parameters outside the tables), if one was
            "reference_dense_parameters": reference_parameters,
        },
        plan=engine.plan_summary(),
        engine=dataclasses.asdict(engine.report),
        world_size=world_size,
        device=str(device),
        dense_parameters=dense_parameter_count(model),
        peak_memory_mb_per_rank=_peak_memory_mb(device),
        embedding_bytes_per_rank=_embedding_bytes(model),
        history=state.history,
    )


def _serving_setup(latency: dict[str, LatencyEntry]) -> str | None:
    """What was timed: one description when every batch size was timed alike, else one per kind
    with its batch sizes (None: nothing was)."""
    batches_by_kind: dict[str, list[str]] = {}
    for batch, entry in latency.items():
        batches_by_kind.setdefault(entry.serving, []).append(batch)
    if len(batches_by_kind) <= 1:
        return next((SERVING_SETUP[kind] for kind in batches_by_kind), None)
    return "; ".join(f"{kind}: {SERVING_SETUP[kind]} (batch {', '.join(batches)})" for kind, batches in sorted(batches_by_kind.items()))


def write_result(out: Path, result: TrainResult) -> Path:
    path = out / RESULT_FILE
    remote.write_text(path, result.to_json())
    return path


def upload_outputs(cfg: TrainConfig, out: Path) -> str | None:
    """Copy tb/ and then result.json to cfg.upload_to (result last: whoever waits for it finds
    the logs already there). Returns the error, printed, if the upload failed, else None."""
    if not cfg.upload_to:
        return None
    try:
        remote.upload_tree(out / "tb", remote.join(cfg.upload_to, "tb"))
        remote.write_text(remote.join(cfg.upload_to, RESULT_FILE), (out / RESULT_FILE).read_text())
    except OSError as err:
        print(f"recsearch train: could not upload to {cfg.upload_to}: {err}", file=sys.stderr)
        return str(err)
    return None


def _write_eval(writer: SummaryWriter, split: str, m: SplitMetrics, step: int) -> None:
    for key in ("auc", "log_loss", "ne", "accuracy"):
        writer.add_scalar(f"{split}/{key}", getattr(m, key), step)


# What the HParams entry of a run holds: the model and how it is trained (not paths or run settings).
HPARAM_KEYS = ("arch.", "hparams.", "embedding_precision", "dense_precision", "train_rows", "max_rows_per_table",
               "num_embeddings_per_feature", "epochs", "max_steps")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _log(rank: int, message: str) -> None:
    if rank == 0:
        logs.get("train").info(f"[recsearch train] {message}")


def main(argv: list[str] | None = None, *, split_cache: SplitCache | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsearch train", description="Train one DLRM.")
    parser.add_argument("--config", required=True, help="YAML file of TrainConfig fields (configs/train/)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key, defaults included) instead of training")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. hparams.batch_size=4096")
    args = parser.parse_intermixed_args(argv)
    if args.print_config:  # `recsearch train --print-config` is answered by recsearch.cli before this
        parser.error("--print-config: run it as `recsearch train --print-config ...`")
    try:
        logs.configure()
    except ValueError as err:
        print(f"recsearch train: {err}", file=sys.stderr)
        return 2
    try:
        cfg = config.load(TrainConfig, args.config, args.overrides)
    except config.ConfigError as err:
        print(f"recsearch train: {err}", file=sys.stderr)
        return 2
    started = threading.Event()  # set once setup is done: a failure before it keeps a finished run's result
    try:
        with sigterm_as_interrupt() as owns_signals:
            try:
                result = train(cfg, split_cache=split_cache, on_training_start=started.set)
            except RunDirInUse as err:  # refused before anything was written
                print(f"recsearch train: {err}", file=sys.stderr)
                return 2
            except (FileNotFoundError, ValueError) as err:
                _write_failure(cfg, err, started.is_set())
                print(f"recsearch train: {err}", file=sys.stderr)
                return 2
            except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (a scheduler's stop, a preemption)
                _write_failure(cfg, err, started.is_set(), interrupt_name(err))
                if not owns_signals:  # a search running this trial in its own process: its interrupt
                    raise
                _log(_rank(), f"{interrupt_name(err)}; {_resume_hint(cfg)}")
                return interrupt_exit_code(err)
            # BaseException: torch.distributed.checkpoint's CheckpointException is not an Exception,
            # and a crashed run must still leave a result file saying so.
            except BaseException as err:
                _write_failure(cfg, err, started.is_set())
                raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    summary = ", ".join(f"{s} AUC {m.auc:.4f} NE {m.ne:.4f}" if m.ne is not None else f"{s} AUC {m.auc:.4f}"
                        for s, m in result.metrics.items())
    _log(_rank(), f"{result.status}: {summary or 'no evaluation'}; result in {Path(cfg.output_dir) / RESULT_FILE}")
    return 0 if result.ok and result.upload_error is None else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def _resume_hint(cfg: TrainConfig) -> str:
    """Where an interrupted run can continue from, in words."""
    newest = checkpoint.latest_named(cfg.output_dir)
    if newest is None or not newest.is_dir():
        return ("no checkpoint was written, nothing to resume" if not cfg.checkpoint_every_steps
                else "no checkpoint was written yet, nothing to resume")
    if cfg.resume_from == "auto":
        return f"the newest checkpoint is {newest}: the same command continues from it (resume_from=auto)"
    return (f"the newest checkpoint is {newest}: continue with the same command and resume_from=latest"
            + ("" if cfg.resume_from == "latest" else " (in place of resume_from)" if cfg.resume_from else ""))


def _write_failure(cfg: TrainConfig, err: BaseException, training_started: bool, error: str | None = None) -> None:
    """result.json saying the run failed, and why (`error`, else the exception). A run that failed
    before training started (a refused resume, a typo in data_dir) does not replace the result of
    a finished run in the same folder: that run's result stays, and the exit code says this one
    failed."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    out = Path(cfg.output_dir)
    if not training_started and finished_status(out) is not None:
        print(f"recsearch train: {out / RESULT_FILE} is left as it was: it is the result of the run that "
              "finished there, and this run failed before it trained", file=sys.stderr)
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # no folder to write into (the error says why)
    write_result(out, TrainResult(
        status="failed", error=error or f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=20),
        config=config.to_dict(cfg),
    ))
    upload_outputs(cfg, out)  # on failure the local result.json still says what failed


if __name__ == "__main__":
    raise SystemExit(main())
