"""Value types shared across recsearch's subpackages.

Standard library only: every subpackage may import this module, and it imports none of them.
All values are frozen dataclasses so they can be hashed, compared and sent between processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NUM_DENSE_FEATURES = 13
# The file every training run (`recsearch train`, `recsearch baseline logreg`) writes in its output
# directory; the search reads only this.
RESULT_FILE = "result.json"
NUM_SPARSE_FEATURES = 26
# DreamShard's access-frequency features: the share of a table's lookups that hit rows whose reuse
# count (lookups of that row in one batch) falls in the bins (0,1], (1,2], (2,4], ..., (2^15, inf).
NUM_REUSE_BINS = 17


@dataclass(frozen=True)
class TableSpec:
    """One embedding table as placement and model building see it."""

    name: str
    num_rows: int
    dim: int
    pooling_factor: float = 1.0  # mean ids looked up per sample
    # Share of lookups per power-of-two reuse bin (NUM_REUSE_BINS values summing to 1), or empty
    # when unknown.
    reuse_hist: tuple[float, ...] = ()
    feature_names: tuple[str, ...] = ()  # features pooled by this table; default: (name,)
    bytes_per_value: int = 4  # 4 for fp32 weights, 2 for fp16

    def __post_init__(self) -> None:
        if self.num_rows <= 0:
            raise ValueError(f"table {self.name!r}: num_rows must be positive, got {self.num_rows}")
        if self.dim <= 0:
            raise ValueError(f"table {self.name!r}: dim must be positive, got {self.dim}")
        if self.pooling_factor <= 0:
            raise ValueError(
                f"table {self.name!r}: pooling_factor must be positive, got {self.pooling_factor}"
            )
        if self.reuse_hist and len(self.reuse_hist) != NUM_REUSE_BINS:
            raise ValueError(
                f"table {self.name!r}: reuse_hist needs {NUM_REUSE_BINS} bins, "
                f"got {len(self.reuse_hist)}"
            )

    @property
    def size_bytes(self) -> int:
        """Weight memory of the table (no optimizer state)."""
        return self.num_rows * self.dim * self.bytes_per_value

    @property
    def features(self) -> tuple[str, ...]:
        return self.feature_names or (self.name,)


@dataclass(frozen=True)
class Topology:
    """The devices a model is placed on."""

    world_size: int
    device_memory_bytes: int  # memory cap per device for embedding tables (+ optimizer state)
    compute_device: str = "cpu"  # "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.world_size <= 0:
            raise ValueError(f"world_size must be positive, got {self.world_size}")
        if self.device_memory_bytes <= 0:
            raise ValueError(
                f"device_memory_bytes must be positive, got {self.device_memory_bytes}"
            )


class Interaction(str, enum.Enum):
    """Feature-interaction layer of a DLRM."""

    DOT = "dot"
    DCN = "dcn"
    PROJECTION = "projection"


@dataclass(frozen=True)
class ArchSpec:
    """A DLRM architecture. MLP sizes are output widths of each layer."""

    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)  # last must equal embedding_dim
    top_mlp: tuple[int, ...] = (512, 256, 1)  # last must be 1
    interaction: Interaction = Interaction.DOT
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 512
    projection_branch1: tuple[int, ...] = (512, 128)  # DLRM_Projection's interaction branches
    projection_branch2: tuple[int, ...] = (512, 128)

    def __post_init__(self) -> None:
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"bottom_mlp must end in embedding_dim={self.embedding_dim}, got {self.bottom_mlp}"
            )
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end in 1, got {self.top_mlp}")
        if any(w <= 0 for w in self.bottom_mlp + self.top_mlp):
            raise ValueError("MLP widths must be positive")
        if Interaction(self.interaction) is Interaction.PROJECTION:
            for name in ("projection_branch1", "projection_branch2"):
                branch = getattr(self, name)
                if not branch or branch[-1] % self.embedding_dim:
                    raise ValueError(
                        f"{name} must end in a multiple of embedding_dim={self.embedding_dim}, "
                        f"got {branch}"
                    )


@dataclass(frozen=True)
class HParams:
    """Training hyperparameters of one run."""

    batch_size: int = 2048
    embedding_optimizer: str = "sgd"  # sgd | adagrad | rowwise_adagrad | adam
    embedding_lr: float = 0.1
    dense_optimizer: str = "sgd"  # sgd | adagrad | adam | lamb
    dense_lr: float = 0.1
    warmup_steps: int = 0
    decay_start_step: int = 0  # 0: no decay
    decay_steps: int = 0
    seed: int = 0


class TrialState(enum.IntEnum):
    PENDING = 0
    RUNNING = 1
    COMPLETE = 2
    FAILED = 3
    PRUNED = 4

    @property
    def finished(self) -> bool:
        return self in (TrialState.COMPLETE, TrialState.FAILED, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialSpec:
    """What one search trial trains."""

    trial_id: int
    arch: ArchSpec
    hparams: HParams
    train_rows: int  # fidelity: training rows seen
    topology: Topology
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial reports (read from the result file the trial writes)."""

    trial_id: int
    state: TrialState
    auc: float | None = None
    log_loss: float | None = None
    accuracy: float | None = None
    step_time_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    error: str | None = None
