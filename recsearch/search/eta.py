"""The search progress line's ETA: trials done of the budget, and the time the rest should take.

The remaining work is counted in rung runs (one trial trained at one rung's rows): the search's
budget of `trials` configurations, grouped in brackets of `bracket_size`, each bracket promoting
the best max(1, n // eta) of a rung to the next (recsearch.search.asha) — failures, which end a
trial early, are not foreseen, so the estimate errs long. A rung's run takes the mean wall time of
the runs of that rung that finished; a rung with none yet takes the nearest rung's, scaled by the
ratio of training rows (which overstates a larger rung: its fixed start-up cost is scaled too).
The runs left share `concurrency` workers.
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


def finished_walls(rung_notes: Sequence[Mapping[str, Any]], n_rungs: int) -> list[list[float]]:
    """The wall seconds of every finished run, by rung, from trials' `rungs` notes
    ({"0": {"wall_s": 12.3, ...}, ...})."""
    walls: list[list[float]] = [[] for _ in range(n_rungs)]
    for rungs in rung_notes:
        for rung, entry in rungs.items():
            wall_s = (entry or {}).get("wall_s")
            if wall_s is not None and 0 <= int(rung) < n_rungs:
                walls[int(rung)].append(float(wall_s))
    return walls


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
                concurrency: int) -> float | None:
    """Seconds until the planned runs are done, on `concurrency` workers; None: nothing to go on."""
    per_run_s = rung_wall_s(walls, train_rows)
    if per_run_s is None:
        return None
    left = [max(0, p - len(w)) for p, w in zip(planned, walls)]
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
    left_s = remaining_s(planned_runs(trials, bracket_size, eta, n_rungs), walls, train_rows, concurrency)
    eta_text = "-" if left_s is None else format_duration(left_s)
    return f"{trials_done}/{trials} trials done, ETA {eta_text}"
