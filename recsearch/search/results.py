"""One search directory's trials as flat rows: what the report, the TensorBoard HParams entries and
the parameter-importance analysis all read.

The journal (recsearch.search.store) keeps each trial's spec, state, TrialResult and free-form
notes written by the search loop; this module turns one record into a `TrialRow` with the trial's
decisions (`trial_params`) and every number the user compares trials on, so the three readers
agree on what "the AUC" or "the latency" of a trial is. Nothing here writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsearch.search.store import JOURNAL_FILE, JournalStore, TrialRecord
from recsearch.types import Interaction, TrialSpec, TrialState

SEARCH_CONFIG = "search.yaml"  # written by recsearch.search.loop
TRIALS_DIR = "trials"
TRIAL_CONFIG = "trial.yaml"

# How a row's kind reads in tables and the HParams dashboard.
REFERENCE = "reference"  # the hand-tuned base config, trained once as the human baseline
CANDIDATE = "candidate"  # proposed by the controller and trained
REJECTED = "rejected"  # proposed, but never trained (did not fit / over the step-cost budget)

# Numbers a row may be ranked or plotted by, and whether higher is better.
METRICS: dict[str, bool] = {
    "auc": True,
    "test_auc": True,
    "reward": True,
    "log_loss": False,
    "ne": False,
    "accuracy": True,
}
COSTS = ("latency_p50_ms", "latency_p99_ms", "est_step_cost_ms", "step_time_ms")


class NoSearchError(FileNotFoundError):
    """The directory holds no search journal."""


@dataclass(frozen=True)
class TrialRow:
    """One trial with its decisions and measured numbers (None: not measured)."""

    trial_id: int
    kind: str  # REFERENCE | CANDIDATE | REJECTED
    state: TrialState
    params: dict[str, Any] = field(hash=False, compare=False)
    summary: str = ""  # the architecture and hyperparameters in one line
    auc: float | None = None  # validation AUC (the search's metric)
    log_loss: float | None = None
    ne: float | None = None  # validation normalized entropy (log loss / entropy of the click rate)
    accuracy: float | None = None
    test_auc: float | None = None
    latency_p50_ms: float | None = None  # at the search's serving batch
    latency_p99_ms: float | None = None
    # p50 over the search's reference architecture timed in the same rounds (same conditions)
    latency_vs_reference: float | None = None
    step_time_ms: float | None = None  # measured training step
    est_step_cost_ms: float | None = None  # placement + cost model, before training
    reward: float | None = None  # what the controller was told
    wall_s: float | None = None
    train_rows: int | None = None
    error: str | None = None  # failure, rejection or pruning reason
    created_at_s: float = 0.0
    updated_at_s: float = 0.0

    @property
    def state_label(self) -> str:
        """COMPLETE / FAILED / PRUNED / RUNNING / PENDING, or REJECTED for untrained candidates."""
        return "REJECTED" if self.kind == REJECTED else self.state.name

    def value(self, key: str) -> float | None:
        """A metric or cost by name; None when missing or not finite."""
        raw = getattr(self, key)
        if raw is None or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            return None
        return float(raw)


def trial_params(spec: TrialSpec) -> dict[str, Any]:
    """The trial's decisions under the search space's names (recsearch.search.space.SpaceConfig).

    Read from the spec itself rather than from the option indices, so the reference config (not
    drawn from the space) gets the same columns. MLP depth is the number of hidden layers and
    width the widest of them: for a candidate (all hidden layers equally wide) exactly the
    decision. The DCN knobs are included only for a DCN interaction, where they mean something
    (the importance analysis treats them as conditional parameters)."""
    a, h = spec.arch, spec.hparams
    interaction = Interaction(a.interaction).value
    params: dict[str, Any] = {
        "embedding_dim": int(a.embedding_dim),
        "bottom_depth": len(a.bottom_mlp) - 1,
        "bottom_width": max(a.bottom_mlp[:-1], default=0),
        "top_depth": len(a.top_mlp) - 1,
        "top_width": max(a.top_mlp[:-1], default=0),
        "interaction": interaction,
    }
    if interaction == Interaction.DCN.value:
        params["dcn_num_layers"] = int(a.dcn_num_layers)
        params["dcn_low_rank_dim"] = int(a.dcn_low_rank_dim)
    params.update(
        batch_size=int(h.batch_size),
        embedding_optimizer=str(h.embedding_optimizer),
        embedding_lr=float(h.embedding_lr),
        dense_optimizer=str(h.dense_optimizer),
        dense_lr=float(h.dense_lr),
        warmup_steps=int(h.warmup_steps),
        decay_steps=int(h.decay_steps),
    )
    if h.decay_steps:  # where a decay starts means something only when there is one
        params["decay_start_step"] = int(h.decay_start_step)
    for name, value in spec.model_args.items():  # a user model's decisions, under the space's names
        params[f"model_args.{name}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a table or a log line, "-" when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def describe(spec: TrialSpec) -> str:
    """One line: embedding dim, MLP widths, interaction, batch, optimizers and learning rates. A
    model of the user's own (a spec with model_args, as the search space tells them apart) shows
    its own decisions instead of the DLRM's MLPs and interaction, which it does not have."""
    a, h = spec.arch, spec.hparams
    inter = Interaction(a.interaction).value
    if inter == Interaction.DCN.value:
        inter = f"dcn {a.dcn_num_layers}x{a.dcn_low_rank_dim}"
    bottom = "-".join(str(w) for w in a.bottom_mlp[:-1]) or "none"
    top = "-".join(str(w) for w in a.top_mlp[:-1]) or "none"
    warmup = f", warmup {h.warmup_steps}" if h.warmup_steps else ""
    if h.decay_steps:
        warmup += f", decay {h.decay_start_step}+{h.decay_steps}"
    user = "".join(f", {k} {v}" for k, v in spec.model_args.items())
    dlrm = "" if spec.model_args else f", bottom {bottom}, top {top}, {inter}"
    return (
        f"dim {a.embedding_dim}{dlrm}, batch {h.batch_size}, "
        f"emb {h.embedding_optimizer} {h.embedding_lr:g}, dense {h.dense_optimizer} {h.dense_lr:g}{warmup}{user}"
    )


def is_reference(record: TrialRecord) -> bool:
    """The search's reference trial: its `reference` note, or its spec (the reference spec is
    marked `extra.reference`, so a journal of an older search killed between the reference's
    create line and the line with its note still knows it)."""
    return bool(record.notes.get("reference") or record.spec.extra.get("reference"))


def row_of(record: TrialRecord) -> TrialRow:
    """A journal record as a row."""
    notes = record.notes
    result = record.result
    if is_reference(record):
        kind = REFERENCE
    elif notes.get("rejected"):
        kind = REJECTED
    else:
        kind = CANDIDATE
    error = None
    if kind == REJECTED:
        error = str(notes["rejected"])
    elif record.state is TrialState.FAILED:
        error = (result.error if result else None) or "failed (no error recorded)"
    elif record.state is TrialState.PRUNED and notes.get("pruned"):
        error = str(notes["pruned"])
    train_rows = notes.get("train_rows")
    return TrialRow(
        trial_id=record.trial_id,
        kind=kind,
        state=record.state,
        params=trial_params(record.spec),
        summary=describe(record.spec),
        auc=_num(result.auc) if result else None,
        log_loss=_num(result.log_loss) if result else None,
        accuracy=_num(result.accuracy) if result else None,
        ne=_num(notes.get("val_ne")),
        test_auc=_num(notes.get("test_auc")),
        latency_p50_ms=_num(result.latency_p50_ms) if result else None,
        latency_p99_ms=_num(result.latency_p99_ms) if result else None,
        latency_vs_reference=_num(result.latency_ratio) if result else None,
        step_time_ms=_num(result.step_time_ms) if result else None,
        est_step_cost_ms=_num(notes.get("est_step_cost_ms")),
        reward=_num(notes.get("reward")),
        wall_s=_num(notes.get("wall_s")),
        train_rows=int(train_rows) if isinstance(train_rows, int) else record.spec.train_rows,
        error=error,
        created_at_s=record.created_at_s,
        updated_at_s=record.updated_at_s,
    )


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class SearchDir:
    """A search directory as read now (the search may still be running)."""

    path: Path
    config: dict[str, Any]  # search.yaml as written by the loop ({} when absent)
    records: tuple[TrialRecord, ...]

    @property
    def rows(self) -> list[TrialRow]:
        return [row_of(r) for r in self.records]

    def trial_dir(self, trial_id: int) -> Path:
        return self.path / TRIALS_DIR / str(trial_id)


def read_search(path: Path | str) -> SearchDir:
    """Read a search directory: its journal (required) and search.yaml (optional: a search killed
    before writing it still has a journal worth reporting). Writes nothing (a read-only directory
    reads the same)."""
    path = Path(path)
    if not path.is_dir():
        raise NoSearchError(f"{path}: no such directory")
    if not (path / JOURNAL_FILE).is_file():
        raise NoSearchError(
            f"{path}: no {JOURNAL_FILE}, so no search has run here "
            f"(give the directory that `recsearch search` wrote: its --out / output_dir)"
        )
    cfg: dict[str, Any] = {}
    cfg_path = path / SEARCH_CONFIG
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{cfg_path}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{cfg_path}: top level must be a mapping, got {type(loaded).__name__}")
        cfg = loaded or {}
    records = tuple(JournalStore(path, read_only=True).trials())  # a report writes nothing there
    return SearchDir(path=path, config=cfg, records=records)
