"""The search progress line's ETA: trials done of the budget, and the time the rest should take.

The remaining work is counted in rung runs (one trial trained at one rung's rows): the search's
budget of `trials` configurations, grouped in brackets of `bracket_size`, each bracket promoting
the best max(1, n // eta) of a rung to the next (recsearch.search.asha). A run that finished counts
as done whether it trained or failed (a rung note is written for both); a failed run ends its trial,
so a rung above gets no more runs than the rung below has runs that did not fail. Failures still to
come are not foreseen, so the estimate errs long. A rung's run takes the mean wall time of the runs
of that rung that trained (those that failed, often in their first steps, when none did); a rung
with none yet takes the nearest rung's, scaled by the ratio of training rows (which overstates a
larger rung: its fixed start-up cost is scaled too). The runs left share `concurrency` workers.
With every trial of the budget finished, nothing is left: ETA 0 s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def planned_runs(trials: int, bracket_size: int, eta: int, n_rungs: int) -> list[int]:
    """How many runs each rung gets when every trial trains (no failures)."""
    sizes = [bracket_size] * (trials // bracket_size) + ([trials % bracket_size] if trials % bracket_size else [])
    out = [0] * n_rungs
    for size in sizes:
        n = size
        for rung in range(n_rungs):
            out[rung] += n
            n = max(1, n // eta)
    return out


def failed(entry: Mapping[str, Any] | None) -> bool:
    """Whether a rung note is a run that failed: its AUC recorded as none (diverged, crashed, timed
    out, no result), or an error without an AUC."""
    e = entry or {}
    return e.get("auc") is None and ("auc" in e or bool(e.get("error")))


def _entries(rung_notes: Sequence[Mapping[str, Any]], n_rungs: int) -> list[list[Mapping[str, Any]]]:
    """Every finished run's rung note, by rung."""
    out: list[list[Mapping[str, Any]]] = [[] for _ in range(n_rungs)]
    for rungs in rung_notes:
        for rung, entry in rungs.items():
            if 0 <= int(rung) < n_rungs:
                out[int(rung)].append(entry or {})
    return out


def finished_runs(rung_notes: Sequence[Mapping[str, Any]], n_rungs: int) -> list[int]:
    """How many runs finished at each rung, failed ones included (each has a rung note)."""
    return [len(entries) for entries in _entries(rung_notes, n_rungs)]


def failed_runs(rung_notes: Sequence[Mapping[str, Any]], n_rungs: int) -> list[int]:
    """How many of those failed, at each rung."""
    return [sum(failed(e) for e in entries) for entries in _entries(rung_notes, n_rungs)]


def finished_walls(rung_notes: Sequence[Mapping[str, Any]], n_rungs: int) -> list[list[float]]:
    """The wall seconds of the finished runs, by rung, from trials' `rungs` notes
    ({"0": {"wall_s": 12.3, "auc": 0.71, ...}, ...}): those that trained, or at a rung where every
    run failed, those that failed."""
    walls: list[list[float]] = []
    for entries in _entries(rung_notes, n_rungs):
        timed = [e for e in entries if e.get("wall_s") is not None]
        trained = [e for e in timed if not failed(e)]
        walls.append([float(e["wall_s"]) for e in (trained or timed)])
    return walls


def expected_runs(planned: Sequence[int], failed_at: Sequence[int]) -> list[int]:
    """The planned runs of each rung, less those failures took away: a rung above gets at most
    as many runs as the rung below has runs that did not fail."""
    out: list[int] = []
    for rung, plan in enumerate(planned):
        out.append(plan if rung == 0 else min(plan, max(0, out[-1] - failed_at[rung - 1])))
    return out


def rung_wall_s(walls: Sequence[Sequence[float]], train_rows: Sequence[int]) -> list[float] | None:
    """Each rung's expected run time in seconds; None while no run has finished."""
    means = [sum(w) / len(w) if w else None for w in walls]
    known = [rung for rung, mean in enumerate(means) if mean is not None]
    if not known:
        return None
    out = []
    for rung, mean in enumerate(means):
        if mean is None:
            near = min(known, key=lambda k: (abs(train_rows[k] - train_rows[rung]), k))
            mean = means[near] * train_rows[rung] / train_rows[near]  # type: ignore[operator]
        out.append(mean)
    return out


def remaining_s(planned: Sequence[int], walls: Sequence[Sequence[float]], train_rows: Sequence[int],
                concurrency: int, done: Sequence[int] | None = None) -> float | None:
    """Seconds until the planned runs are done, on `concurrency` workers; None: nothing to go on.
    `done`: the runs finished at each rung (default: those with a wall time in `walls`)."""
    per_run_s = rung_wall_s(walls, train_rows)
    if per_run_s is None:
        return None
    done = [len(w) for w in walls] if done is None else done
    left = [max(0, p - d) for p, d in zip(planned, done)]
    return sum(n * s for n, s in zip(left, per_run_s)) / max(1, concurrency)


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def progress_eta(rung_notes: Sequence[Mapping[str, Any]], trials_done: int, trials: int, bracket_size: int,
                 eta: int, train_rows: Sequence[int], concurrency: int) -> str:
    """'7/20 trials done, ETA 3 min 20 s' ('ETA -' until a run has finished)."""
    n_rungs = len(train_rows)
    walls = finished_walls(rung_notes, n_rungs)
    planned = expected_runs(planned_runs(trials, bracket_size, eta, n_rungs), failed_runs(rung_notes, n_rungs))
    left_s = remaining_s(planned, walls, train_rows, concurrency, finished_runs(rung_notes, n_rungs))
    if trials_done >= trials:
        left_s = 0.0  # every trial of the budget finished, however it ended
    eta_text = "-" if left_s is None else format_duration(left_s)
    return f"{trials_done}/{trials} trials done, ETA {eta_text}"
