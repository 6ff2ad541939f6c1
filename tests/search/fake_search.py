"""Search directories laid out as `recsearch search` writes them, built with the real JournalStore:
search.yaml, journal.jsonl, trials/<id>/{trial.yaml, placement.json, result.json}. The numbers are
chosen by the test, so reports can be checked against them exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsearch import config
from recsearch.search.space import SearchSpace, SpaceConfig
from recsearch.search.store import JournalStore
from recsearch.types import (
    ArchSpec,
    HParams,
    Topology,
    TrialResult,
    TrialSpec,
    TrialState,
)

TOPOLOGY = Topology(world_size=1, device_memory_bytes=1 << 30)
TRAIN_ROWS = 4096
SPACE = SpaceConfig(
    embedding_dim=(8, 16),
    bottom_depth=(1, 2),
    bottom_width=(32, 64, 128),
    top_depth=(1,),
    top_width=(32, 64),
    batch_size=(256, 512),
    dcn_num_layers=(1, 2),
    dcn_low_rank_dim=(16,),
)
BASE = {
    "max_rows_per_table": 1000,
    "epochs": 1,
    "latency_batch_sizes": [256],
    "latency_iters": 5,
    "tensorboard": True,
}
REFERENCE_ARCH = ArchSpec(embedding_dim=16, bottom_mlp=(64, 32, 16), top_mlp=(64, 1))
REFERENCE_HPARAMS = HParams(batch_size=512, embedding_optimizer="rowwise_adagrad", embedding_lr=0.05,
                            dense_optimizer="adagrad", dense_lr=0.02)


def space() -> SearchSpace:
    return SearchSpace(SPACE, TOPOLOGY, TRAIN_ROWS, seed=0)


@dataclass
class FakeSearch:
    root: Path
    data_dir: Path
    store: JournalStore = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = {
            "data_dir": str(self.data_dir),
            "fidelity": {"train_rows": [TRAIN_ROWS], "eta": 3, "bracket_size": 0},
            "train": None,
            "base": {**BASE, "data_dir": str(self.data_dir)},
            "controller": "random",
            "trials": 12,
            "objective": {"metric": "latency", "budget_ms": None, "serving_batch": 256},
            "output_dir": str(self.root),
        }
        (self.root / "search.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.store = JournalStore(self.root)

    def reference(self, auc: float, latency_ms: float, wall_s: float = 5.0) -> int:
        spec = TrialSpec(-1, REFERENCE_ARCH, REFERENCE_HPARAMS, TRAIN_ROWS, TOPOLOGY, extra={"reference": "1"})
        rec = self.store.create_trial(spec)
        self.store.set_state(rec.trial_id, TrialState.PENDING, notes={"reference": True})
        return self._finish(rec.trial_id, spec, auc, latency_ms, wall_s, est_ms=0.5)

    def candidate(self, choices: tuple[int, ...], auc: float | None, latency_ms: float | None,
                  est_ms: float = 0.4, wall_s: float = 3.0, error: str | None = None, pruned: bool = False) -> int:
        spec = space().decode(choices)
        rec = self.store.create_trial(spec)
        self.store.set_state(rec.trial_id, TrialState.PENDING, notes={"est_step_cost_ms": est_ms, "bracket": 0})
        if pruned:
            self._write_trial_dir(rec.trial_id, spec, auc, latency_ms, error)
            result = TrialResult(rec.trial_id, TrialState.COMPLETE, auc=auc, latency_p50_ms=latency_ms)
            self.store.set_state(rec.trial_id, TrialState.RUNNING, notes={"rung": 0, "train_rows": TRAIN_ROWS // 3})
            self.store.set_state(rec.trial_id, TrialState.PRUNED, result=result,
                                 notes={"pruned": "not promoted at rung 0 (1,365 rows): rank 3 of 3", "wall_s": wall_s})
            return rec.trial_id
        return self._finish(rec.trial_id, spec, auc, latency_ms, wall_s, est_ms, error)

    def rejected(self, choices: tuple[int, ...], why: str = "does not fit 1 x 1 MiB: table t_cat_3 needs 2 MiB") -> int:
        spec = space().decode(choices)
        rec = self.store.create_trial(spec)
        self.store.set_state(rec.trial_id, TrialState.PRUNED, notes={"rejected": why})
        return rec.trial_id

    def running(self, choices: tuple[int, ...]) -> int:
        spec = space().decode(choices)
        rec = self.store.create_trial(spec)
        self.store.set_state(rec.trial_id, TrialState.RUNNING, notes={"rung": 0, "train_rows": TRAIN_ROWS})
        return rec.trial_id

    def _finish(self, trial_id: int, spec: TrialSpec, auc: float | None, latency_ms: float | None, wall_s: float,
                est_ms: float, error: str | None = None) -> int:
        self._write_trial_dir(trial_id, spec, auc, latency_ms, error)
        self.store.set_state(trial_id, TrialState.RUNNING, notes={"rung": 0, "train_rows": TRAIN_ROWS})
        if error is not None:
            result = TrialResult(trial_id, TrialState.FAILED, error=error)
            self.store.set_state(trial_id, TrialState.FAILED, result=result, notes={"wall_s": wall_s})
        else:
            result = TrialResult(trial_id, TrialState.COMPLETE, auc=auc, log_loss=_log_loss(auc), accuracy=0.75,
                                 step_time_ms=2.0, latency_p50_ms=latency_ms,
                                 latency_p99_ms=None if latency_ms is None else latency_ms * 1.5)
            self.store.set_state(trial_id, TrialState.COMPLETE, result=result,
                                 notes={"wall_s": wall_s, "test_auc": auc - 0.001 if auc else None,
                                        "val_ne": round(1.5 - auc, 4) if auc else None,
                                        "est_step_cost_ms": est_ms, "reward": auc, "train_rows": TRAIN_ROWS})
        return trial_id

    def _write_trial_dir(self, trial_id: int, spec: TrialSpec, auc: float | None, latency_ms: float | None,
                         error: str | None) -> None:
        """What the loop and the trainer leave in trials/<id>/."""
        workdir = self.root / "trials" / str(trial_id)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "placement.json").write_text(json.dumps({"placement": {f"t_cat_{i}": 0 for i in range(26)}}))
        train_cfg = {**BASE, "data_dir": str(self.data_dir), "output_dir": str(workdir),
                     "arch": config.to_dict(spec.arch), "hparams": config.to_dict(spec.hparams),
                     "train_rows": spec.train_rows, "plan": str(workdir / "placement.json"), "resume_from": None}
        (workdir / "trial.yaml").write_text(yaml.safe_dump(train_cfg, sort_keys=False))
        if error is not None:
            result: dict[str, Any] = {"status": "failed", "error": error, "metrics": {}, "config": train_cfg}
        else:
            val = {"auc": auc, "log_loss": _log_loss(auc), "accuracy": 0.75, "rows": 2048}
            result = {
                "status": "completed", "config": train_cfg,
                "metrics": {"val": val, "test": {**val, "auc": auc - 0.001 if auc else None}},
                "steps": 8, "step_time_ms": 2.0,
                "latency_ms": {"256": {"p50_ms": latency_ms, "p99_ms": None if latency_ms is None else latency_ms * 1.5}},
                "history": [{"step": 8, "loss": 0.5}],
            }
        (workdir / "result.json").write_text(json.dumps(result, indent=1))


def _log_loss(auc: float | None) -> float | None:
    return None if auc is None else round(1.2 - auc, 6)


def choices(**picked: int) -> tuple[int, ...]:
    """Option indices for the space's decisions (0 for any not named)."""
    names = [d.name for d in space().decisions]
    unknown = set(picked) - set(names)
    assert not unknown, unknown
    return tuple(picked.get(n, 0) for n in names)
