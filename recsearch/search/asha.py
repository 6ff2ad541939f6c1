"""Multi-fidelity scheduling: successive halving over rungs of training rows, ASHA-style.

Every configuration starts at the lowest rung (fewest training rows). Configurations are grouped
into brackets of `bracket_size` in the order they are added; once every member of a bracket has a
result at rung k, the best max(1, floor(n/eta)) of those with a score are promoted to rung k + 1
and the others are *pruned* (not failed: they trained fine, they were just not good enough).
A configuration that completes the top rung is complete.

Why decisions are taken per bracket and not fully asynchronously as in ASHA proper: in ASHA a
configuration that is not promoted yet may still be promoted later (the rung grows, and with it
the top 1/eta), so it can never be declared pruned until the search ends, and the controller
would learn nothing about it while the search runs. Inside a bracket the decision is final and
prompt. Brackets overlap like ASHA's rungs do: while a bracket waits for its slowest member, free
workers start the next bracket's configurations, so no worker idles while there is work.

The scheduler is a pure function of the facts it is told (which trial joined, which rung result
came back with which score), so a resumed search rebuilds it exactly by replaying the store.
No I/O, no clock, no randomness: ties in score go to the lower trial id.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Status(enum.Enum):
    RUN = "run"  # needs a run at its rung (not started, or started and not back yet)
    WAITING = "waiting"  # has its rung's result; waits for the bracket's decision
    PRUNED = "pruned"  # not promoted at its rung
    COMPLETE = "complete"  # finished the top rung
    FAILED = "failed"  # its run at its rung failed


@dataclass(frozen=True)
class TrialStatus:
    status: Status
    rung: int  # the highest rung the trial was promoted into
    rank: int | None = None  # 1-based rank among the bracket's scored trials at that rung
    of: int | None = None  # how many scored trials that rung had


class SuccessiveHalving:
    """rungs: training rows per rung, ascending. One rung: every trial simply trains once."""

    def __init__(self, rungs: tuple[int, ...], eta: int = 3, bracket_size: int = 0):
        if not rungs:
            raise ValueError("successive halving needs at least one rung")
        if any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise ValueError(f"rungs must be strictly increasing, got {list(rungs)}")
        if eta < 2:
            raise ValueError(f"eta must be >= 2, got {eta}")
        self.rungs = tuple(rungs)
        self.eta = eta
        self.bracket_size = bracket_size or eta ** (len(rungs) - 1)
        if self.bracket_size < 1:
            raise ValueError(f"bracket_size must be >= 1, got {bracket_size}")
        self._members: list[list[int]] = []  # trials of each bracket, in the order added
        self._bracket_of: dict[int, int] = {}
        self._scores: dict[tuple[int, int], float | None] = {}  # (trial, rung) -> score; None: failed
        self._closed_early = False  # the last bracket will get no more members

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def add(self, trial_id: int) -> int:
        """A new configuration joins the open bracket (a new one when the last is full); returns
        the bracket's index."""
        if trial_id in self._bracket_of:
            raise ValueError(f"trial {trial_id} was already added")
        if self._closed_early:
            raise ValueError("no more trials can be added: the last bracket was closed")
        if not self._members or len(self._members[-1]) >= self.bracket_size:
            self._members.append([])
        self._members[-1].append(trial_id)
        self._bracket_of[trial_id] = len(self._members) - 1
        return len(self._members) - 1

    def close(self) -> None:
        """No more configurations will come: the last bracket decides with the members it has."""
        self._closed_early = True

    def record(self, trial_id: int, rung: int, score: float | None) -> None:
        """The result of a trial's run at a rung: its score (higher is better), None if it failed."""
        if trial_id not in self._bracket_of:
            raise KeyError(f"trial {trial_id} was never added")
        if not 0 <= rung <= self.top:
            raise ValueError(f"rung {rung} out of range 0..{self.top}")
        if score is not None and not math.isfinite(score):
            score = None
        self._scores[(trial_id, rung)] = score

    def bracket_of(self, trial_id: int) -> int:
        return self._bracket_of[trial_id]

    def trials(self) -> list[int]:
        return [t for members in self._members for t in members]

    def status(self, trial_id: int) -> TrialStatus:
        return self._statuses(self._bracket_of[trial_id])[trial_id]

    def runnable(self) -> list[tuple[int, int]]:
        """(trial, rung) runs that are due, oldest bracket first and higher rungs first within it
        (promotions finish brackets, which frees the controller's feedback soonest)."""
        due = []
        for b in range(len(self._members)):
            for t, s in self._statuses(b).items():
                if s.status is Status.RUN:
                    due.append((b, -s.rung, t))
        return [(t, -neg_rung) for b, neg_rung, t in sorted(due)]

    # ---- the decision rule ------------------------------------------------------------------------
    def _full(self, b: int) -> bool:
        return len(self._members[b]) >= self.bracket_size or (
            self._closed_early and b == len(self._members) - 1
        )

    def _statuses(self, b: int) -> dict[int, TrialStatus]:
        members = list(self._members[b])
        out: dict[int, TrialStatus] = {}
        for rung in range(len(self.rungs)):
            promoted: list[int] = []
            ranked = sorted(
                (t for t in members if self._scores.get((t, rung)) is not None),
                key=lambda t: (-float(self._scores[(t, rung)]), t),  # type: ignore[arg-type]
            )
            rank = {t: i + 1 for i, t in enumerate(ranked)}
            closed = (rung > 0 or self._full(b)) and all((t, rung) in self._scores for t in members)
            n_promote = max(1, len(ranked) // self.eta) if ranked else 0
            for t in members:
                if (t, rung) not in self._scores:
                    out[t] = TrialStatus(Status.RUN, rung)
                elif self._scores[(t, rung)] is None:
                    out[t] = TrialStatus(Status.FAILED, rung)
                elif rung == self.top:
                    out[t] = TrialStatus(Status.COMPLETE, rung, rank[t], len(ranked))
                elif not closed:
                    out[t] = TrialStatus(Status.WAITING, rung, rank[t], len(ranked))
                elif rank[t] <= n_promote:
                    promoted.append(t)
                else:
                    out[t] = TrialStatus(Status.PRUNED, rung, rank[t], len(ranked))
            members = promoted
            if not members:
                break
        return out
