"""Value types shared across recsearch's subpackages.

Standard library only: every subpackage may import this module, and it imports none of them.
All values are frozen dataclasses so they can be hashed, compared and sent between processes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NUM_DENSE_FEATURES = 13
# The file every training run (`recsearch train`, `recsearch baseline logreg`) writes in its output
# directory; the search reads only this.
RESULT_FILE = "result.json"
NUM_SPARSE_FEATURES = 26
# DreamShard's access-frequency features: the share of a table's lookups that hit rows whose reuse
# count (lookups of that row in one batch) falls in the bins (0,1], (1,2], (2,4], ..., (2^15, inf).
NUM_REUSE_BINS = 17


MAX_SEED = 2**63 - 1
# The optimizer names HParams accepts (recsearch.train.optim builds them): the tables' optimizer is
# fused into FBGEMM's backward kernel; the dense one is recsearch.train.optim.DenseOptimizer.
EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam", "lamb")


class SettingsError(ValueError):
    """Bad values in a settings dataclass. Each of `problems` starts with the field's name
    ('batch_size must be >= 1, got -4'), so a config loader can put the section and the file in
    front of it ('train.yaml: hparams.batch_size must be >= 1, got -4'; recsearch.config does)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def check_int(
    problems: list[str], key: str, value: object, minimum: int, *,
    maximum: int | None = None, optional: bool = False,
) -> None:
    """Append a problem unless value is an integer (not a bool) >= minimum (and <= maximum), or
    None when optional."""
    if optional and value is None:
        return
    null = " or null" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key} must be an integer{null}, got {value!r}")
    elif maximum is not None and not minimum <= value <= maximum:
        problems.append(f"{key} must be in {minimum}..{maximum}{null}, got {value!r}")
    elif value < minimum:
        problems.append(f"{key} must be >= {minimum}{null}, got {value!r}")


def check_table_sizes(problems: list[str], key: str, value: object) -> None:
    """Append a problem unless value is None (not set) or a list of NUM_SPARSE_FEATURES table
    sizes, or of one size for every table, each an integer >= 1."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or len(value) not in (1, NUM_SPARSE_FEATURES):
        problems.append(f"{key} must be a list of {NUM_SPARSE_FEATURES} table sizes, or of one size "
                        f"for every table, or null, got {value!r}")
        return
    bad = [s for s in value if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        problems.append(f"{key} must hold integers >= 1, got {bad[0]!r}")

def check_number(
    problems: list[str], key: str, value: object, *, above: float | None = None,
    minimum: float | None = None, maximum: float | None = None, optional: bool = False,
) -> None:
    """Append a problem unless value is a finite number (int or float, not a bool) > above,
    >= minimum and <= maximum (each bound when given), or None when optional."""
    if optional and value is None:
        return
    bounds = [f"> {above}" if above is not None else "", f">= {minimum}" if minimum is not None else "",
              f"<= {maximum}" if maximum is not None else ""]
    wanted = " and ".join(b for b in bounds if b)
    null = " or null" if optional else ""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (above is not None and not value > above)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        problems.append(f"{key} must be a finite number{' ' + wanted if wanted else ''}{null}, got {value!r}")


def check_widths(problems: list[str], key: str, widths: object) -> None:
    """Append a problem unless widths is a non-empty sequence of integers >= 1."""
    if (
        not isinstance(widths, (tuple, list))
        or not widths
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
    ):
        problems.append(f"{key} must be a non-empty list of integers >= 1, got {widths!r}")


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
        problems: list[str] = []
        check_int(problems, "embedding_dim", self.embedding_dim, 1)
        for name in ("bottom_mlp", "top_mlp"):
            check_widths(problems, name, getattr(self, name))
        if not problems and self.bottom_mlp[-1] != self.embedding_dim:
            problems.append(
                f"bottom_mlp must end in embedding_dim={self.embedding_dim}, got {self.bottom_mlp}"
            )
        if not problems and self.top_mlp[-1] != 1:
            problems.append(f"top_mlp must end in 1, got {self.top_mlp}")
        try:
            interaction = Interaction(self.interaction)
        except ValueError:
            allowed = ", ".join(i.value for i in Interaction)
            problems.append(f"interaction must be one of {allowed}, got {self.interaction!r}")
            interaction = None
        check_int(problems, "dcn_num_layers", self.dcn_num_layers, 1)
        check_int(problems, "dcn_low_rank_dim", self.dcn_low_rank_dim, 1)
        for name in ("projection_branch1", "projection_branch2"):
            before = len(problems)
            check_widths(problems, name, getattr(self, name))
            branch = getattr(self, name)
            if (
                interaction is Interaction.PROJECTION
                and len(problems) == before
                and isinstance(self.embedding_dim, int)
                and self.embedding_dim >= 1
                and branch[-1] % self.embedding_dim
            ):
                problems.append(
                    f"{name} must end in a multiple of embedding_dim={self.embedding_dim}, "
                    f"got {branch}"
                )
        if problems:
            raise SettingsError(problems)


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

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_int(problems, "batch_size", self.batch_size, 1)
        for name in ("embedding_lr", "dense_lr"):
            check_number(problems, name, getattr(self, name), above=0)
        for name, known in (("embedding_optimizer", EMBEDDING_OPTIMIZERS), ("dense_optimizer", DENSE_OPTIMIZERS)):
            if getattr(self, name) not in known:  # checked here: before any data is read
                problems.append(f"{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "decay_start_step", "decay_steps"):
            check_int(problems, name, getattr(self, name), 0)
        check_int(problems, "seed", self.seed, 0, maximum=MAX_SEED)
        if not problems and self.decay_steps and self.decay_start_step < self.warmup_steps:
            problems.append(
                f"decay_start_step must be >= warmup_steps ({self.warmup_steps}) when decay_steps "
                f"> 0 (decay may not start inside warmup), got {self.decay_start_step}"
            )
        if problems:
            raise SettingsError(problems)


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
    # the decisions of a model of the user's own (the train config's model_args), as searched
    model_args: dict[str, Any] = field(default_factory=dict, hash=False)


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
    # the same p50 measured twice (first vs second half of its timing rounds) differed by this share
    latency_spread: float | None = None
    # the search's reference architecture, timed in the same rounds as this model
    latency_reference_p50_ms: float | None = None
    # this model's latency over the reference's, paired round by round (None: not measured so)
    latency_vs_reference: float | None = None
    error: str | None = None

    @property
    def latency_ratio(self) -> float | None:
        """This model's latency over the reference architecture's, timed in the same rounds: the
        paired ratio where the trainer measured it, else the ratio of the two p50s."""
        if self.latency_vs_reference is not None:
            return self.latency_vs_reference
        if self.latency_p50_ms is None or not self.latency_reference_p50_ms:
            return None
        return self.latency_p50_ms / self.latency_reference_p50_ms
