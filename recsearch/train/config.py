"""`recsearch train` settings: the TrainConfig value (configs/train/*.yaml).

Standard library only, so the search (which builds one TrainConfig per trial) and the config
checks import it without torch. The trainer (recsearch.train.trainer) is the only reader that
acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsearch.types import ArchSpec, HParams

EMBEDDING_PRECISIONS = ("fp32", "fp16")  # table weights (and their fused optimizer updates)
DENSE_PRECISIONS = ("fp32", "bf16")  # MLPs + interaction under autocast (weights stay fp32)
# How a run trains. "single": one device, no sharding machinery (FBGEMM TBE with the optimizer
# fused into backward, the step captured as a CUDA graph on a GPU); "pipeline": DMP +
# TrainPipelineSparseDist; "auto": single in a world of one, pipeline otherwise.
ENGINES = ("auto", "single", "pipeline")
TRISTATE = ("auto", "true", "false")


@dataclass(frozen=True)
class TrainConfig:
    """`recsearch train` settings (configs/train/*.yaml)."""

    data_dir: str
    output_dir: str = "runs/train"
    arch: ArchSpec = field(default_factory=ArchSpec)
    hparams: HParams = field(default_factory=HParams)
    max_rows_per_table: int | None = None  # cap table rows (ids are hashed into the cap)
    train_rows: int | None = None  # use only the first rows of the train split (fidelity)
    epochs: int = 1
    max_steps: int | None = None
    eval_every_steps: int = 0  # 0: evaluate only at the end
    eval_rows: int | None = None  # rows of val/test used per evaluation (default: all)
    auc_threshold: float | None = None  # stop once validation AUC reaches it (like MLPerf)
    plan: str = "torchrec"  # "torchrec" (its planner) or a JSON file {table name: rank}
    device: str = "auto"  # auto | cpu | cuda
    engine: str = "auto"  # auto | single | pipeline (see ENGINES)
    # single engine on CUDA: capture the whole step (forward, backward, both optimizer updates) as
    # one CUDA graph. auto: when the step allows it (result.json says why not, when not)
    cuda_graph: str = "auto"  # auto | true | false
    # single engine: hold the train split in device memory (batches are gathered there, no
    # loader thread). auto: on CUDA when it fits in half the free device memory
    data_on_device: str = "auto"  # auto | true | false
    log_every_steps: int = 50
    prefetch_batches: int = 2
    latency_batch_sizes: tuple[int, ...] = (1, 256)
    latency_iters: int = 30
    tensorboard: bool = True
    checkpoint_every_steps: int = 0  # 0: no checkpoints; else save every N steps (and at the end)
    embedding_precision: str = "fp32"  # fp32 | fp16: table weights (and fused optimizer updates)
    dense_precision: str = "fp32"  # fp32 | bf16: MLPs + interaction under autocast (fp32 weights)
    resume_from: str | None = None  # "latest" (newest in output_dir/checkpoints) or a directory
    compile_dense: bool = False  # torch.compile the bottom MLP, interaction and top MLP
    # also copy result.json and tb/ here when the run ends, however it ends: a directory or an
    # fsspec URL (s3://...), for jobs whose output_dir the submitter cannot see (recsearch.remote)
    upload_to: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.log_every_steps < 1:
            raise ValueError("log_every_steps must be >= 1")
        for key, value, allowed in (
            ("embedding_precision", self.embedding_precision, EMBEDDING_PRECISIONS),
            ("dense_precision", self.dense_precision, DENSE_PRECISIONS),
            ("engine", self.engine, ENGINES),
            ("cuda_graph", self.cuda_graph, TRISTATE),
            ("data_on_device", self.data_on_device, TRISTATE),
        ):
            if value not in allowed:
                raise ValueError(f"{key} must be {' or '.join(allowed)}, got {value!r}")
