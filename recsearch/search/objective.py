"""What the search maximizes: AUC, subject to a serving-latency or step-cost budget.

The budget defaults to the reference DLRM config's own number ("no slower than the hand-tuned
model"): its measured inference latency at the serving batch, or its estimated step cost.

- metric "latency": latency is only known after training, so the budget is soft:
  reward = AUC - penalty * max(0, latency / budget - 1). A soft penalty, not a hard cut, because a
  latency measured on a shared machine carries a few percent of noise; a model 1 % over budget
  should rank just below an equal one within it, not last.
- metric "step_cost": the estimated embedding step cost is known before training (placement +
  cost model), so candidates over budget * (1 + tolerance) are rejected before any training and
  the reward is the AUC.
- metric "none": the reward is the AUC.

Whatever the metric, `max_step_cost_ms` is a hard cap on the estimated step cost checked before
training, so a latency-budgeted search can also refuse models whose embedding step the target
cluster could not afford (both the estimate and the measured latency then shape the search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METRICS = ("latency", "step_cost", "none")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The search config's `objective:` section."""

    metric: str = "latency"  # latency | step_cost | none
    budget_ms: float | None = None  # None: the reference config's latency / step cost
    serving_batch: int = 256  # the batch size whose p50 latency is the latency
    penalty: float = 0.1  # latency: reward lost per 100 % over budget
    tolerance: float = 0.0  # step_cost: rejected above budget * (1 + tolerance)
    max_step_cost_ms: float | None = None  # any metric: rejected before training above this estimate

    def problems(self) -> list[str]:
        """'objective.key: what' for every bad setting (the search config loader reports them
        with the file, all at once)."""
        out = []
        if self.metric not in METRICS:
            out.append(f"objective.metric: must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for key in ("budget_ms", "max_step_cost_ms"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                out.append(f"objective.{key}: must be positive (or null), got {value}")
        if isinstance(self.serving_batch, bool) or self.serving_batch < 1:
            out.append(f"objective.serving_batch: must be >= 1, got {self.serving_batch}")
        for key in ("penalty", "tolerance"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                out.append(f"objective.{key}: must be >= 0, got {value}")
        return out


def latency_for_budget(
    latency_ms: float | None, vs_reference: float | None, budget_ms: float | None,
    budget_is_reference: bool, reference_trial_ratio: float | None = None,
) -> float | None:
    """The latency to compare with the budget. When the budget is the reference config's latency
    and the trial timed the reference's architecture in the same rounds as its own model (the
    device to itself, recsearch.train.latency), the candidate's latency is its ratio to that
    reference (`vs_reference`) over the reference trial's own ratio (the reference trial timed
    its trained model beside a fresh one of the same architecture; dividing by it makes the
    reference exactly meet its budget) times the budget: models timed under the same
    conditions, instead of two moments of a shared machine. Otherwise the measured latency."""
    if budget_is_reference and budget_ms is not None and latency_ms is not None and vs_reference is not None and vs_reference > 0:
        own = reference_trial_ratio if reference_trial_ratio and reference_trial_ratio > 0 else 1.0
        return vs_reference / own * budget_ms
    return latency_ms


def judged_latency_note(latency_ms: float | None, judged_ms: float | None, budget_ms: float | None,
                        digits: int = 3) -> str:
    """What to print after a trial's raw p50 latency when the budget judges another number:
    ' (judged 1.31 ms = 1.115x budget)', where `judged_ms` is `latency_for_budget`'s result (the
    paired ratio to the reference scaled to the budget) and the two differ at `digits` decimals;
    '' when they agree, or when either number or the budget is unknown. So a model whose raw p50
    is below the budget but whose paired latency is over it says why it is judged over."""
    if latency_ms is None or judged_ms is None or not budget_ms or not math.isfinite(judged_ms):
        return ""
    if f"{latency_ms:.{digits}f}" == f"{judged_ms:.{digits}f}":
        return ""
    return f" (judged {judged_ms:.{digits}f} ms = {judged_ms / budget_ms:.3f}x budget)"


def reward(
    objective: ObjectiveConfig, auc: float | None, latency_ms: float | None, budget_ms: float | None
) -> float | None:
    """The controller's reward for a trained trial (None: no usable result)."""
    if auc is None or not math.isfinite(auc):
        return None
    if objective.metric != "latency" or budget_ms is None:
        return float(auc)
    if latency_ms is None or not math.isfinite(latency_ms):
        return None
    return float(auc) - objective.penalty * max(0.0, latency_ms / budget_ms - 1.0)


def over_cost_budget(objective: ObjectiveConfig, est_cost_ms: float, budget_ms: float | None) -> str | None:
    """Why a candidate is rejected before training for its estimated step cost (None: it is not)."""
    cap = objective.max_step_cost_ms
    if cap is not None and est_cost_ms > cap:
        return f"estimated step cost {est_cost_ms:.3f} ms is over objective.max_step_cost_ms = {cap:.3f} ms"
    if objective.metric != "step_cost" or budget_ms is None:
        return None
    limit = budget_ms * (1 + objective.tolerance)
    if est_cost_ms > limit:
        return (
            f"estimated step cost {est_cost_ms:.3f} ms is over the budget of {budget_ms:.3f} ms"
            + (f" (+{objective.tolerance:.0%} tolerance)" if objective.tolerance else "")
        )
    return None
