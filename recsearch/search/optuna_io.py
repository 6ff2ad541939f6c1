"""Optuna interop: a search as an Optuna study in journal storage (for optuna-dashboard and
optuna.visualization), and an Optuna study's trials as warm-start observations for a controller.

Export (`export_study`): one Optuna trial per recsearch trial, with the decisions as parameters
(recsearch.search.results.trial_params: the search space's names; DCN knobs only for DCN trials)
and the objectives as values, by default ("auc", "latency_p50_ms") = (maximize, minimize), a
multi-objective study whose Pareto front Optuna plots. Each parameter's distribution is a
categorical of the values the search tried (the space is a grid). States: a completed trial with
every objective measured -> COMPLETE; a trial stopped by successive halving -> PRUNED (with its
last rung's value as an intermediate value at step = training rows, for a single objective); a
failed trial, or a candidate rejected before training (it did not fit the topology) -> FAIL;
unfinished trials are left out. User attributes keep recsearch's trial id, kind, reward, test
AUC, latency p99, training rows, the one-line summary and the error. The file is written whole
(to a temporary name, then renamed): a snapshot of the search when it was exported.

Import (`warm_start`): the COMPLETE trials of an Optuna study, mapped onto a search space's
options, as (TrialSpec, reward) pairs to pass to `controller.observe` before the search proposes.
The reward is the trial's `reward` user attribute (a study exported from a search), else its
value (single objective; negated when the study minimizes), else the value of the objective named
by `objective` (multi-objective). A trial whose parameters are not options of the space is
skipped with the reason.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsearch.search.results import REJECTED, TrialRow, row_of
from recsearch.search.space import SearchSpace
from recsearch.search.store import JournalStore
from recsearch.types import TrialSpec, TrialState

# TrialRow numbers that can be objectives, with Optuna's direction.
OBJECTIVES = {
    "auc": "maximize",
    "test_auc": "maximize",
    "reward": "maximize",
    "log_loss": "minimize",
    "latency_p50_ms": "minimize",
    "latency_p99_ms": "minimize",
    "est_step_cost_ms": "minimize",
    "wall_s": "minimize",
}
DEFAULT_OBJECTIVES = ("auc", "latency_p50_ms")
# TrialRow numbers kept as user attributes (besides the objectives).
ATTRS = ("reward", "test_auc", "latency_p50_ms", "latency_p99_ms", "est_step_cost_ms", "wall_s")


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    study_name: str
    objectives: tuple[str, ...]
    states: dict[str, int]  # Optuna state name -> trials
    left_out: int  # unfinished trials (pending, running)


@dataclass(frozen=True)
class WarmStart:
    observations: list[tuple[TrialSpec, float]]
    skipped: list[str] = field(default_factory=list)  # 'trial N: why'


def export_study(
    search_dir: Path | str,
    out: Path | str,
    *,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    study_name: str | None = None,
    force: bool = False,
) -> ExportSummary:
    """Write the trials of the search in search_dir as an Optuna study to the journal file out."""
    import optuna

    search_dir, out = Path(search_dir), Path(out)
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if not objectives or unknown:
        raise ValueError(f"objectives must be some of {', '.join(OBJECTIVES)}, got {list(objectives)}")
    if not (search_dir / "journal.jsonl").exists():
        raise FileNotFoundError(f"{search_dir}: no journal.jsonl: not a search directory")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: pass --force to replace it (force=True from Python)")
    rows = [row_of(r) for r in JournalStore(search_dir, read_only=True).trials()]  # an export writes nothing there
    finished = [r for r in rows if r.state.finished]
    distributions = _distributions(finished)
    name = study_name or search_dir.resolve().name
    trials = [_frozen_trial(optuna, row, objectives, distributions) for row in finished]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp)))
        study = optuna.create_study(
            storage=storage, study_name=name, directions=[OBJECTIVES[o] for o in objectives]
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard shows
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
        study.set_user_attr("recsearch_search_dir", str(search_dir.resolve()))
        study.add_trials(trials)
        del study, storage
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return ExportSummary(out, name, objectives, states, len(rows) - len(finished))


def _distributions(rows: list[TrialRow]) -> dict[str, Any]:
    """A categorical distribution per parameter over the values the trials took (sorted)."""
    from optuna.distributions import CategoricalDistribution

    values: dict[str, set[Any]] = {}
    for row in rows:
        for name, value in row.params.items():
            values.setdefault(name, set()).add(value)
    return {name: CategoricalDistribution(sorted(v, key=_order)) for name, v in values.items()}


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _frozen_trial(optuna: Any, row: TrialRow, objectives: tuple[str, ...], distributions: dict[str, Any]) -> Any:
    values = [row.value(o) for o in objectives]
    measured = all(v is not None and math.isfinite(v) for v in values)
    attrs: dict[str, Any] = {"recsearch_trial_id": row.trial_id, "kind": row.kind, "summary": row.summary}
    attrs.update({k: row.value(k) for k in ATTRS if row.value(k) is not None})
    if row.train_rows is not None:
        attrs["train_rows"] = row.train_rows
    if row.error:
        attrs["error"] = row.error
    state, intermediate = optuna.trial.TrialState.FAIL, None
    if row.kind == REJECTED or row.state is TrialState.FAILED:
        values = None
    elif row.state is TrialState.PRUNED:
        state = optuna.trial.TrialState.PRUNED
        if len(objectives) == 1 and measured and row.train_rows is not None:
            intermediate = {int(row.train_rows): float(values[0])}
        values = None
    elif measured:
        state = optuna.trial.TrialState.COMPLETE
    else:
        missing = [o for o, v in zip(objectives, values) if v is None or not math.isfinite(v)]
        attrs["error"] = f"not measured: {', '.join(missing)}"
        values = None
    params = dict(row.params)
    return optuna.trial.create_trial(
        state=state,
        values=values,
        params=params,
        distributions={k: distributions[k] for k in params},
        user_attrs=attrs,
        intermediate_values=intermediate,
    )


def warm_start(
    storage_file: Path | str,
    space: SearchSpace,
    *,
    study_name: str | None = None,
    objective: str | None = None,
) -> WarmStart:
    """The COMPLETE trials of the study in an Optuna journal file, as (spec, reward) observations
    on `space` (module doc)."""
    import optuna

    path = Path(storage_file)
    storage = _journal(path)
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name is None and len(names) != 1:
        raise ValueError(f"{path} holds {len(names)} studies ({', '.join(names)}): name one")
    if study_name is not None and study_name not in names:
        raise ValueError(f"{path}: no study {study_name!r} (it holds {', '.join(names)})")
    study = optuna.load_study(study_name=study_name or names[0], storage=storage)
    reward_of = _reward_reader(study, objective)
    observations, skipped = [], []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        try:
            observations.append((space.decode(_choices(space, trial.params)), reward_of(trial)))
        except ValueError as err:
            skipped.append(f"trial {trial.number}: {err}")
    return WarmStart(observations, skipped)


def _journal(path: Path) -> Any:
    """The Optuna journal storage in an existing file."""
    import optuna

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Optuna journal file")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def warm_start_problems(storage_file: Path | str, space: SearchSpace | None) -> list[str]:
    """Why a search config's `warm_start: FILE` cannot warm-start its controller (empty: it can),
    for load_search_config to report before anything is written: optuna missing, no such file, a
    file Optuna cannot read, or one holding other than one study (the setting names a file, not a
    study). With the space, the study's trials are mapped onto it too, as the search will."""
    path = Path(storage_file)
    if not path.is_file():
        return [f"{path}: no such file (an Optuna journal file, e.g. from `recsearch optuna export`)"]
    try:
        import optuna  # noqa: F401 - only to say it is missing, here rather than mid-search
    except ImportError as err:
        return [f"reading the Optuna study {path} needs optuna ({err}): pip install 'recsearch[search]'"]
    try:
        names = [s.study_name for s in _journal(path).get_all_studies()]
    except Exception as err:  # noqa: BLE001 - a foreign or damaged file fails anywhere in Optuna's replay
        return [f"{path}: not a readable Optuna journal file ({type(err).__name__}: {err})"]
    if len(names) != 1:
        held = f" ({', '.join(names)})" if names else ""
        return [f"{path} holds {len(names)} studies{held}: a warm start reads a file with exactly one; "
                f"copy the one to use into a file of its own (optuna.copy_study, or `recsearch optuna export` "
                f"of its search)"]
    if space is not None:
        try:
            warm_start(path, space)
        except Exception as err:  # noqa: BLE001 - as above: say which file and why
            return [f"{path}: study {names[0]!r} cannot be read ({type(err).__name__}: {err})"]
    return []


def _reward_reader(study: Any, objective: str | None) -> Any:
    """trial -> reward (what the controllers maximize)."""
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or [None] * len(directions)
    if objective is not None:
        if objective not in names:
            raise ValueError(f"objective {objective!r} is not one of the study's objectives {names}")
        index = names.index(objective)
    elif len(directions) == 1:
        index = 0
    else:
        index = None  # only trials with a reward attribute can be used
    sign = 1.0 if index is None or directions[index] == "maximize" else -1.0

    def reward(trial: Any) -> float:
        if objective is None and isinstance(trial.user_attrs.get("reward"), (int, float)):
            return float(trial.user_attrs["reward"])
        if index is None:
            raise ValueError(
                f"trial {trial.number} of a multi-objective study has no 'reward' attribute: "
                f"name the objective to use as the reward (one of {names})"
            )
        return sign * float(trial.values[index])

    return reward


def _choices(space: SearchSpace, params: dict[str, Any]) -> tuple[int, ...]:
    """Option indices of the space that give these decision values (a DCN knob absent from a
    non-DCN trial takes the first option, which does not affect the model). A parameter that is no
    decision of the space (another model's `model_args.*`, a knob of another program) is an error:
    the trial's reward was earned by a model this space cannot build."""
    names = {d.name for d in space.decisions}
    foreign = [name for name in params if name not in names]
    if foreign:
        raise ValueError(f"{', '.join(sorted(foreign))}: not a decision of this space (a trial of another "
                         f"model or search space)")
    choices = []
    for decision in space.decisions:
        options = [o.value if hasattr(o, "value") else o for o in decision.options]
        if decision.name not in params:
            if len(options) == 1 or decision.name.startswith("dcn_") or decision.name == "decay_start_step":
                choices.append(0)
                continue
            raise ValueError(f"no value for {decision.name}")
        value = params[decision.name]
        index = next((i for i, o in enumerate(options) if _same(o, value)), None)
        if index is None:
            raise ValueError(f"{decision.name}={value!r} is not an option of this space ({options})")
        choices.append(index)
    return tuple(choices)


def _same(option: Any, value: Any) -> bool:
    if isinstance(option, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.isclose(float(option), float(value), rel_tol=1e-6)
    return str(option) == str(value)
