"""Which decisions mattered: parameter importance over a search's finished trials.

Computed by Optuna's PED-ANOVA evaluator (optuna.importance), a maintained implementation that
needs no extra dependency (fANOVA would need scikit-learn). The trials are not an Optuna study, so
they are copied into an in-memory one: each trial's decisions become categorical parameters (the
search space is discrete, and categorical keeps e.g. "interaction" and "batch_size" on the same
footing), its metric the objective value. DCN knobs exist only in DCN trials: PED-ANOVA treats them
as conditional parameters.

Only COMPLETE candidates at the search's top fidelity are used: the reference config was not drawn
from the space, and trials stopped early by successive halving were measured on fewer rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recsearch.search.results import CANDIDATE, METRICS, TrialRow
from recsearch.types import TrialState

MIN_TRIALS = 5  # below this the top-quantile vs all comparison of PED-ANOVA says nothing


class NotEnoughTrialsError(ValueError):
    """Too few usable trials (or no decision varied) for an importance estimate."""


@dataclass(frozen=True)
class Importance:
    scores: tuple[tuple[str, float], ...]  # (decision, share of importance), most important first
    constant: tuple[str, ...]  # decisions that took one value in every trial: not ranked
    n_trials: int
    metric: str
    method: str = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"


def usable_rows(rows: Sequence[TrialRow], metric: str) -> list[TrialRow]:
    """COMPLETE candidates (not the reference, not early-stopped) with a finite `metric`."""
    return [
        r for r in rows
        if r.kind == CANDIDATE and r.state is TrialState.COMPLETE and r.value(metric) is not None
    ]


def param_importance(rows: Sequence[TrialRow], metric: str = "auc", min_trials: int = MIN_TRIALS) -> Importance:
    """Importance of each decision for `metric` (normalized to sum to 1 over the varied ones).

    Raises NotEnoughTrialsError, saying how many trials there are and how many are needed, when
    fewer than `min_trials` usable trials exist or no decision took two values."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if min_trials < 2:
        raise ValueError(f"min_trials must be >= 2, got {min_trials}")
    usable = usable_rows(rows, metric)
    if len(usable) < min_trials:
        raise NotEnoughTrialsError(
            f"parameter importance needs at least {min_trials} complete trials with a finite {metric}; "
            f"this search has {len(usable)} (of {len(rows)} trials in the journal). "
            f"Run more trials (or resume the search) and report again."
        )
    values: dict[str, set[Any]] = {}
    for row in usable:
        for name, value in row.params.items():
            values.setdefault(name, set()).add(value)
    varied = sorted(n for n, v in values.items() if len(v) > 1)
    constant = tuple(sorted(n for n, v in values.items() if len(v) == 1))
    if not varied:
        raise NotEnoughTrialsError(
            f"parameter importance: every one of the {len(usable)} complete trials has the same "
            f"decisions, so nothing can be ranked"
        )
    scores = _ped_anova(usable, varied, values, metric)
    ordered = tuple(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))
    return Importance(scores=ordered, constant=constant, n_trials=len(usable), metric=metric)


def _ped_anova(rows: list[TrialRow], names: list[str], values: dict[str, set[Any]], metric: str) -> dict[str, float]:
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(logging.WARNING)
    maximize = METRICS[metric]
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    choices = {n: tuple(sorted(values[n], key=_sort_key)) for n in names}
    for row in rows:
        params = {n: row.params[n] for n in names if n in row.params}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={n: CategoricalDistribution(choices[n]) for n in params},
                value=row.value(metric),
            )
        )
    raw = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=True
    )
    return {name: float(raw.get(name, 0.0)) for name in names}


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
