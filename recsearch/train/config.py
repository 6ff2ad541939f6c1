"""`recsearch train` settings: the TrainConfig value (configs/train/*.yaml).

Standard library only, so the search (which builds one TrainConfig per trial) and the config
checks import it without torch. The trainer (recsearch.train.trainer) is the only reader that
acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recsearch.types import ArchSpec, HParams, SettingsError, check_int, check_number, check_table_sizes

EMBEDDING_PRECISIONS = ("fp32", "fp16")  # table weights (and their fused optimizer updates)
DENSE_PRECISIONS = ("fp32", "bf16")  # MLPs + interaction under autocast (weights stay fp32)
# How a run trains. "single": one device, no sharding machinery (FBGEMM TBE with the optimizer
# fused into backward, the step captured as a CUDA graph on a GPU); "pipeline": DMP +
# TrainPipelineSparseDist; "auto": single in a world of one, pipeline otherwise.
ENGINES = ("auto", "single", "pipeline")
TRISTATE = ("auto", "true", "false")
EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class LatencyReference:
    """The model a run times beside its own for latency (recsearch.train.latency), built as the run
    builds its own: the built-in DLRM of `arch`, or with `model` set a model of the user's own, that
    factory called with `model_args` over tables `arch.embedding_dim` wide (a search sets the base
    config's model and model_args here, so a trial of a user model is timed beside that model)."""

    arch: ArchSpec = field(default_factory=ArchSpec)
    embedding_precision: str = "fp32"
    dense_precision: str = "fp32"
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for key, allowed in (("embedding_precision", EMBEDDING_PRECISIONS), ("dense_precision", DENSE_PRECISIONS)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key} must be {' or '.join(allowed)}, got {getattr(self, key)!r}")
        model_problems(problems, self.model, self.model_args, self.dense_precision)
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True)
class TrainConfig:
    """`recsearch train` settings (configs/train/*.yaml)."""

    data_dir: str
    output_dir: str = "runs/train"
    arch: ArchSpec = field(default_factory=ArchSpec)
    hparams: HParams = field(default_factory=HParams)
    # a TorchRec model of your own instead of the built-in DLRMs: a factory 'package.module:function'
    # (recsearch.model.factory: the contract) and the decisions it is called with
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    max_rows_per_table: int | None = None  # cap table rows (ids are hashed into the cap)
    # Table sizes of a data_dir without meta.json (TorchRec's own npy files): 26 sizes, or one for
    # every table; ids are hashed modulo them. Unset there: max id + 1 (recsearch.data.dataset)
    num_embeddings_per_feature: tuple[int, ...] | None = None
    train_rows: int | None = None  # use only the first rows of the train split (fidelity)
    epochs: int = 1
    max_steps: int | None = None
    eval_every_steps: int = 0  # 0: evaluate only at the end
    eval_rows: int | None = None  # rows of val/test used per evaluation (default: all)
    # the splits evaluated when training ends (a search's lower rungs skip test: it decides nothing)
    eval_splits: tuple[str, ...] = ("val", "test")
    auc_threshold: float | None = None  # stop once validation AUC reaches it (like MLPerf)
    # where the tables go over several ranks, always through LearnedShardingPlanner: "torchrec"
    # (TorchRec's planner picks the ranks), a placer name (learned or a baseline:
    # recsearch.placement.registry.PLACERS) or a JSON placement file {table name: rank}
    plan: str = "torchrec"
    device: str = "auto"  # auto | cpu | cuda
    # CUDA: this process may allocate at most this share of the device's memory (several trials
    # of a search sharing one GPU); an allocation past it fails this run alone. null: no cap
    device_memory_fraction: float | None = None
    engine: str = "auto"  # auto | single | pipeline (see ENGINES)
    # single engine on CUDA: capture the whole step (forward, backward, both optimizer updates) as
    # one CUDA graph. auto: when the step allows it (result.json says why not, when not)
    cuda_graph: str | bool = "auto"  # auto | true | false
    # single engine: hold the train split in device memory (batches are gathered there, no
    # loader thread). auto: on CUDA when it fits in half the free device memory
    data_on_device: str | bool = "auto"  # auto | true | false
    log_every_steps: int = 50
    prefetch_batches: int = 2
    latency_batch_sizes: tuple[int, ...] = (1, 256)
    latency_iters: int = 30  # at least this many timed calls per model and batch size
    # Latency is timed in rounds until the same model measured twice (first half of the rounds vs
    # second half) differs by at most this share at the p50, or latency_max_seconds pass
    latency_target_spread: float = 0.03
    latency_max_seconds: float = 20.0
    # on CUDA, time replays of the forward captured as a CUDA graph (how a GPU server that graphs
    # its model serves it). auto: when the capture works (else eager, and result.json says why)
    latency_cuda_graph: str | bool = "auto"  # auto | true | false
    # also time a reference model in the same rounds (the search's reference: the built-in DLRM of
    # an architecture, or a model of your own at given model_args; random weights): the search
    # compares candidates with the budget as a ratio measured alike
    latency_reference: LatencyReference | None = None
    # a lock file shared by the trainings on one device (a search sets it): training holds it
    # shared, the latency measurement exclusive, so latency is timed with the device to itself
    device_lock: str | None = None
    tensorboard: bool = True
    # the run's HParams entry in tb/hparams (a search sets false: its tensorboard/ has one per trial)
    tensorboard_hparams: bool = True
    checkpoint_every_steps: int = 0  # 0: no checkpoints; else save every N steps (and at the end)
    embedding_precision: str = "fp32"  # fp32 | fp16: table weights (and fused optimizer updates)
    dense_precision: str = "fp32"  # fp32 | bf16: MLPs + interaction under autocast (fp32 weights)
    # "latest" (newest in output_dir/checkpoints), a checkpoint directory, or "auto": latest if
    # output_dir has a checkpoint, else a fresh run (a job that may be retried or requeued)
    resume_from: str | None = None
    # a run that does not resume refuses an output_dir holding another run's checkpoints or
    # finished result; true deletes them first (recsearch.train.run_dir)
    overwrite_output: bool = False
    compile_dense: bool = False  # torch.compile the bottom MLP, interaction and top MLP
    # also copy result.json and tb/ here when the run ends, however it ends: a directory or an
    # fsspec URL (s3://...), for jobs whose output_dir the submitter cannot see (recsearch.remote)
    upload_to: str | None = None

    def __post_init__(self) -> None:
        for key in ("cuda_graph", "data_on_device", "latency_cuda_graph"):  # YAML reads true/false as booleans
            value = getattr(self, key)
            if isinstance(value, bool):
                object.__setattr__(self, key, "true" if value else "false")
        problems = settings_problems(self)
        if problems:
            raise SettingsError(problems)


def settings_problems(cfg: TrainConfig) -> list[str]:
    """Every setting of cfg that would hang the run, make it lie or crash it late, each starting
    with its key ('max_steps must be >= 1 or null, got 0'). Arch and hparams check themselves when
    they are built (recsearch.types)."""
    problems: list[str] = []
    for key in ("data_dir", "output_dir", "plan"):
        value = getattr(cfg, key)
        if not isinstance(value, str) or not value:
            problems.append(f"{key} must be a non-empty string, got {value!r}")
    for key in ("resume_from", "upload_to"):
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{key} must be a non-empty string or null, got {value!r}")
    for key in ("max_rows_per_table", "train_rows", "eval_rows", "max_steps"):
        check_int(problems, key, getattr(cfg, key), 1, optional=True)  # 0 would train or test nothing
    check_table_sizes(problems, "num_embeddings_per_feature", cfg.num_embeddings_per_feature)
    check_int(problems, "epochs", cfg.epochs, 1)
    check_int(problems, "log_every_steps", cfg.log_every_steps, 1)
    check_int(problems, "latency_iters", cfg.latency_iters, 1)
    check_number(problems, "latency_target_spread", cfg.latency_target_spread, above=0, maximum=1)
    check_number(problems, "latency_max_seconds", cfg.latency_max_seconds, above=0)
    check_number(problems, "device_memory_fraction", cfg.device_memory_fraction, above=0, maximum=1, optional=True)
    if cfg.device_lock is not None and (not isinstance(cfg.device_lock, str) or not cfg.device_lock):
        problems.append(f"device_lock must be a non-empty path or null, got {cfg.device_lock!r}")
    for key in ("eval_every_steps", "checkpoint_every_steps", "prefetch_batches"):
        check_int(problems, key, getattr(cfg, key), 0)  # 0: never (end only), none, no thread
    sizes = cfg.latency_batch_sizes
    if not isinstance(sizes, (tuple, list)) or any(
        isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes
    ):
        problems.append(f"latency_batch_sizes must be a list of integers >= 1, got {sizes!r}")
    model_problems(problems, cfg.model, cfg.model_args, cfg.dense_precision)
    if cfg.model is not None and cfg.compile_dense:
        problems.append("compile_dense compiles the built-in DLRMs' dense parts; a model of your own (model) compiles itself")
    splits = cfg.eval_splits
    if not isinstance(splits, (tuple, list)) or any(s not in EVAL_SPLITS for s in splits) or len(set(splits)) != len(splits):
        problems.append(f"eval_splits must be a list of distinct splits out of {list(EVAL_SPLITS)}, got {splits!r}")
    threshold = cfg.auc_threshold
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1
    ):
        problems.append(f"auc_threshold must be in (0, 1] or null, got {threshold!r}")
    elif threshold is not None and cfg.eval_every_steps == 0:
        problems.append(
            "auc_threshold needs eval_every_steps > 0: it is checked at the periodic evaluations, "
            "and with eval_every_steps = 0 there are none"
        )
    if cfg.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    for key, allowed in (
        ("embedding_precision", EMBEDDING_PRECISIONS),
        ("dense_precision", DENSE_PRECISIONS),
        ("engine", ENGINES),
        ("cuda_graph", TRISTATE),
        ("data_on_device", TRISTATE),
        ("latency_cuda_graph", TRISTATE),
    ):
        value = getattr(cfg, key)
        if value not in allowed:
            problems.append(f"{key} must be {' or '.join(allowed)}, got {value!r}")
    for key in ("tensorboard", "tensorboard_hparams", "compile_dense", "overwrite_output"):
        if not isinstance(getattr(cfg, key), bool):
            problems.append(f"{key} must be true or false, got {getattr(cfg, key)!r}")
    return problems


def model_problems(problems: list[str], model: str | None, model_args: dict[str, Any], dense_precision: str) -> None:
    """What is wrong with a `model` / `model_args` pair (and the dense precision it is trained or
    timed at), each problem starting with its key, appended to `problems`."""
    if model is None:
        if model_args:
            problems.append("model_args are the decisions of a model factory (model), and model is null")
        return
    if not isinstance(model, str) or model.count(":") != 1 or model.startswith(":") or model.endswith(":"):
        problems.append(f"model must be 'package.module:function' (a TorchRec model factory) or null, got {model!r}")
    if not isinstance(model_args, dict):
        problems.append(f"model_args must be a mapping of the factory's decisions, got {model_args!r}")
    if dense_precision != "fp32":
        problems.append("dense_precision autocasts the built-in DLRMs; a model of your own (model) casts itself: "
                        "leave dense_precision fp32")
