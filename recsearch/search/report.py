"""`recsearch report DIR [--out DIR/report] [--metric auc] [--latency-key latency_p50_ms]`

What a finished (or still running, or killed) search found, in files a reviewer can open:

    report.md         counts, budget used, best trial, the reference config, the Pareto front,
                      parameter importance and the table of every trial
    summary.json      the same numbers for scripts (tools/bench_search.py reads searches this way)
    pareto.png        metric vs latency of every trained trial, the front highlighted
    auc_vs_trial.png  metric per trial in proposal order with the best-so-far line
    importance.png    parameter importance (when there are enough trials)
    best_train.yaml   the best architecture as a ready `recsearch train --config` file

"Best" is the best metric among COMPLETE candidates whose latency (--latency-key) is no higher than
the budget: the search's objective.budget_ms when it budgets that quantity, else the reference
config's own number ("no slower than the hand-tuned model"); with no budget known, the best overall.
Trials stopped early by successive halving were measured on fewer rows, so they are listed but not
ranked. The report only reads the search directory (unless --tensorboard asks it to backfill the
HParams dashboard) and writes under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from recsearch.search.importance import (
    MIN_TRIALS,
    Importance,
    NotEnoughTrialsError,
    param_importance,
)
from recsearch.search.objective import latency_for_budget
from recsearch.search.pareto import Front, pareto_front
from recsearch.search.results import (
    CANDIDATE,
    COSTS,
    METRICS,
    REFERENCE,
    REJECTED,
    TRIAL_CONFIG,
    NoSearchError,
    SearchDir,
    TrialRow,
    fmt,
    read_search,
)
from recsearch.search.store import TrialRecord
from recsearch.types import TrialState

BEST_CONFIG = "best_train.yaml"
BEST_PLACEMENT = "best_placement.json"
LABELS = {
    "auc": "val AUC", "test_auc": "test AUC", "reward": "reward", "log_loss": "val log loss", "ne": "val NE",
    "accuracy": "val accuracy", "latency_p50_ms": "latency p50 (ms)", "latency_p99_ms": "latency p99 (ms)",
    "est_step_cost_ms": "est. step cost (ms)", "step_time_ms": "train step (ms)",
}
# objective.metric of the search config -> the row field it budgets
BUDGETED = {"latency": "latency_p50_ms", "step_cost": "est_step_cost_ms"}


@dataclass(frozen=True)
class Counts:
    trials: int  # journal entries (reference and rejected included)
    trained: int  # candidates with a finished run (the search's budget unit): the next four
    complete: int
    failed: int
    pruned: int  # stopped early by successive halving
    rejected: int  # never trained: did not fit the topology / over the step-cost budget
    unfinished: int  # PENDING or RUNNING: the search is running, or was killed
    reference: int
    undecided: int = 0  # trained at a lower rung, its outcome not decided yet (waiting, or training higher)
    running: int = 0  # candidates started or queued whose first run has not finished: not trained yet


@dataclass(frozen=True)
class Budget:
    key: str  # the cost it limits (a COSTS name)
    limit: float | None
    source: str  # where the limit came from


@dataclass(frozen=True)
class Report:
    """Everything report.md and summary.json show."""

    search_dir: Path
    metric: str
    cost_key: str
    counts: Counts
    budget_trials: int | None  # the search's `trials` setting
    elapsed_s: float  # first trial created -> last journal update
    compute_s: float  # sum of the wall times of every run of every trial (each rung of a promoted trial)
    budget: Budget
    best: TrialRow | None  # best within the budget (or overall when no budget is known)
    best_overall: TrialRow | None
    reference: TrialRow | None
    front: Front
    importance: Importance | None
    importance_note: str | None
    bayes_auc: float | None  # the data's Bayes-optimal validation AUC, when the data knows it
    rows: tuple[TrialRow, ...]  # wall_s: the trial's runs at every rung together
    # trial id -> its latency as the budget judges it, where that is not the raw p50 (the budget is
    # the reference's latency: judged by the ratio to the reference timed in the same rounds)
    judged: dict[int, float] = field(default_factory=dict)


def finished_runs(record: TrialRecord) -> int:
    """How many runs of the trial finished: its rung notes (one per rung run, failed ones too;
    the search loop writes them), or for a trial without them (the reference) one if it ended."""
    rungs = record.notes.get("rungs") or {}
    return len(rungs) if rungs else int(record.state.finished and record.notes.get("wall_s") is not None)


def total_wall_s(record: TrialRecord) -> float | None:
    """The wall seconds of all the trial's runs: every rung it trained at (its rung notes: a
    promoted trial's lower rungs too), else its one run's (the reference's)."""
    walls = [entry.get("wall_s") for entry in (record.notes.get("rungs") or {}).values() if entry]
    walls = [float(w) for w in walls if isinstance(w, (int, float)) and math.isfinite(w)]
    if walls:
        return sum(walls)
    wall_s = record.notes.get("wall_s")
    return float(wall_s) if isinstance(wall_s, (int, float)) and math.isfinite(wall_s) else None


def count(rows: Sequence[TrialRow], runs: Mapping[int, int] | None = None) -> Counts:
    """The rows counted by kind and state. `runs`: trial id -> its finished runs (finished_runs);
    an unfinished candidate with none is running (or queued), not trained. Without it every
    unfinished candidate is taken for one that has not trained yet."""
    cands = [r for r in rows if r.kind == CANDIDATE]
    runs = runs or {}
    unfinished = [r for r in cands if not r.state.finished]
    undecided = sum(runs.get(r.trial_id, 0) > 0 for r in unfinished)
    finished = sum(r.state.finished for r in cands)
    return Counts(
        trials=len(rows),
        trained=finished + undecided,
        complete=sum(r.state is TrialState.COMPLETE for r in cands),
        failed=sum(r.state is TrialState.FAILED for r in cands),
        pruned=sum(r.state is TrialState.PRUNED for r in cands),
        rejected=sum(r.kind == REJECTED for r in rows),
        unfinished=sum(not r.state.finished for r in rows),
        reference=sum(r.kind == REFERENCE for r in rows),
        undecided=undecided,
        running=len(unfinished) - undecided,
    )


def ranked(rows: Sequence[TrialRow], metric: str) -> list[TrialRow]:
    """COMPLETE candidates with the metric, best first (ties: the earlier trial)."""
    sign = -1.0 if METRICS[metric] else 1.0
    usable = [r for r in rows if r.kind == CANDIDATE and r.state is TrialState.COMPLETE and r.value(metric) is not None]
    return sorted(usable, key=lambda r: (sign * r.value(metric), r.trial_id))  # type: ignore[operator]


def budget_of(search: SearchDir, rows: Sequence[TrialRow], cost_key: str) -> Budget:
    objective = search.config.get("objective") or {}
    if BUDGETED.get(objective.get("metric", "")) == cost_key and objective.get("budget_ms") is not None:
        return Budget(cost_key, float(objective["budget_ms"]), "objective.budget_ms in search.yaml")
    ref = next((r for r in rows if r.kind == REFERENCE and r.state is TrialState.COMPLETE), None)
    if ref is not None and ref.value(cost_key) is not None:
        return Budget(cost_key, ref.value(cost_key), f"the reference config's (trial {ref.trial_id})")
    return Budget(cost_key, None, "none known (no budget in search.yaml, no finished reference)")


def judged_by_ratio(cost_key: str, budget: Budget) -> bool:
    """Whether the budget judges latency by the paired ratio to the reference rather than by the
    raw p50: a p50 budget that is the reference's own latency (as the search's reward does)."""
    return cost_key == "latency_p50_ms" and budget.limit is not None and not budget.source.startswith("objective.budget_ms")


def _against_budget(row: TrialRow, cost_key: str, budget: Budget, reference: TrialRow | None = None) -> float | None:
    """The row's cost as the search compared it with the budget: for a p50 latency budgeted by
    the reference, the p50 over the reference timed in the same rounds, over the reference
    trial's own such ratio, times the budget (recsearch.search.objective.latency_for_budget);
    else the measured cost."""
    budget_is_reference = not budget.source.startswith("objective.budget_ms")
    if cost_key == "latency_p50_ms":
        own = reference.latency_vs_reference if reference is not None else None
        return latency_for_budget(row.value(cost_key), row.latency_vs_reference, budget.limit, budget_is_reference, own)
    return row.value(cost_key)


def build_report(
    search: SearchDir, metric: str = "auc", cost_key: str = "latency_p50_ms", min_importance_trials: int = MIN_TRIALS
) -> Report:
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if cost_key not in COSTS:
        raise ValueError(f"--latency-key must be one of {', '.join(COSTS)}, got {cost_key!r}")
    walls = {r.trial_id: total_wall_s(r) for r in search.records}
    rows = [replace(r, wall_s=walls.get(r.trial_id, r.wall_s)) for r in search.rows]
    order = ranked(rows, metric)
    budget = budget_of(search, rows, cost_key)
    within = order
    judged: dict[int, float] = {}
    if budget.limit is not None:
        ref_row = next((r for r in rows if r.kind == REFERENCE and r.state is TrialState.COMPLETE), None)
        within = [r for r in order if (v := _against_budget(r, cost_key, budget, ref_row)) is not None and v <= budget.limit]
        if judged_by_ratio(cost_key, budget):
            # rows timed beside the reference (a ratio); the others are judged by their raw p50
            judged = {r.trial_id: v for r in rows if r.state is TrialState.COMPLETE and r.kind != REJECTED
                      and r.latency_vs_reference is not None
                      and (v := _against_budget(r, cost_key, budget, ref_row)) is not None}
    sign = 1.0 if METRICS[metric] else -1.0
    trained = [r for r in rows if r.kind in (CANDIDATE, REFERENCE) and r.state is TrialState.COMPLETE]
    front = pareto_front((r.trial_id, _signed(r.value(metric), sign), r.value(cost_key)) for r in trained)
    importance, note = None, None
    try:
        importance = param_importance(rows, metric, min_importance_trials)
    except NotEnoughTrialsError as err:
        note = str(err)
    created = [r.created_at_s for r in rows if r.created_at_s]
    updated = [r.updated_at_s for r in rows if r.updated_at_s]
    trials_setting = search.config.get("trials")
    return Report(
        search_dir=search.path,
        metric=metric,
        cost_key=cost_key,
        counts=count(rows, {r.trial_id: finished_runs(r) for r in search.records}),
        budget_trials=int(trials_setting) if isinstance(trials_setting, int) else None,
        elapsed_s=(max(updated) - min(created)) if created and updated else 0.0,
        compute_s=sum(r.wall_s or 0.0 for r in rows),  # every rung's run (total_wall_s)
        budget=budget,
        best=within[0] if within else None,
        best_overall=order[0] if order else None,
        reference=next((r for r in rows if r.kind == REFERENCE), None),
        front=front,
        importance=importance,
        importance_note=note,
        bayes_auc=_bayes_auc(search),
        rows=tuple(rows),
        judged=judged,
    )


def _signed(value: float | None, sign: float) -> float | None:
    return None if value is None else sign * value


def _bayes_auc(search: SearchDir) -> float | None:
    data_dir = search.config.get("data_dir")
    if not data_dir:
        return None
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
        value = meta.get("bayes", {}).get("val", {}).get("auc")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---- report.md -----------------------------------------------------------------------------------
def _cell(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cost(rep: Report, row: TrialRow) -> str:
    """'latency p50 (ms) 1.1672' and, where the budget judges it otherwise, what it judged:
    '(judged against the budget: 1.1893)'."""
    text = f"{LABELS[rep.cost_key]} {fmt(row.value(rep.cost_key))}"
    judged = rep.judged.get(row.trial_id)
    return text + (f" (judged against the budget: {fmt(judged)})" if judged is not None else "")


JUDGED_NOTE = (
    "Within the budget is judged as the search's reward judged it: the budget is the reference's p50, and a "
    "trial's latency is its p50 over the reference architecture timed in the same rounds, divided by the "
    "reference trial's own such ratio, times the budget (the judged latency; the raw p50 is from another "
    "moment of a shared machine and can disagree with it)."
)


def _counts_line(c: Counts, budget_trials: int | None) -> str:
    budget_text = f" of the {budget_trials} budgeted" if budget_trials is not None else ""
    undecided = f", {c.undecided} trained at a lower rung and not decided yet" if c.undecided else ""
    return (f"- trained configurations: {c.trained}{budget_text} ({c.complete} complete, {c.failed} failed, "
            f"{c.pruned} pruned by successive halving{undecided}); {c.running} running (no run finished yet)")


def render_markdown(rep: Report, plots: dict[str, Path], best_config: Path | None, best_note: str) -> str:
    c, m, k = rep.counts, LABELS[rep.metric], LABELS[rep.cost_key]
    lines = [f"# Search report: {rep.search_dir}", ""]
    if c.unfinished:
        lines += [(f"**Partial:** {c.unfinished} trial(s) not finished (PENDING/RUNNING): the search is still "
                   f"running or was stopped; resume it with `recsearch search --resume {rep.search_dir}`."), ""]
    lines += [
        "## Counts and budget", "",
        _counts_line(c, rep.budget_trials),
        f"- rejected before training (did not fit / over the step-cost budget): {c.rejected}",
        f"- reference config trained: {'yes' if c.reference else 'no'}",
        (f"- elapsed: {rep.elapsed_s:.0f} s (first trial created to last update); "
         f"trial compute: {rep.compute_s:.0f} s (sum of the wall times of every run: each rung of a promoted "
         f"trial, its lower rungs included, and the reference's)"),
        f"- budget on {k}: " + (f"{rep.budget.limit:.4f} ms ({rep.budget.source})" if rep.budget.limit is not None
                                else rep.budget.source),
        "",
    ]
    if rep.bayes_auc is not None:
        lines += [f"Bayes-optimal validation AUC of the data (the ceiling): {rep.bayes_auc:.4f}", ""]
    lines += ["## Best trial", ""]
    ref = rep.reference
    if rep.best is not None:
        b = rep.best
        lines.append(f"Trial {b.trial_id}: {m} **{fmt(b.value(rep.metric))}**, {_cost(rep, b)}, "
                     f"test AUC {fmt(b.test_auc)}, est. step cost {fmt(b.est_step_cost_ms)} ms: {b.summary}")
    else:
        lines.append(f"No complete candidate within the budget on {k}.")
    if rep.judged:
        lines.append(f"\n{JUDGED_NOTE}")
    if rep.best_overall is not None and rep.best_overall is not rep.best:
        o = rep.best_overall
        lines.append(f"\nBest regardless of {k}: trial {o.trial_id}, {m} {fmt(o.value(rep.metric))}, "
                     f"{_cost(rep, o)}: {o.summary}")
    if ref is not None:
        lines.append(f"\nReference config (trial {ref.trial_id}, {ref.state_label}): {m} {fmt(ref.value(rep.metric))}, "
                     f"{_cost(rep, ref)}: {ref.summary}")
        if rep.best is not None and ref.value(rep.metric) is not None:
            delta = rep.best.value(rep.metric) - ref.value(rep.metric)  # type: ignore[operator]
            lines.append(f"\nBest minus reference: {delta:+.4f} {m}.")
    lines.append("")
    if best_config is not None:
        lines += [(f"Exported: `{best_config.name}` ({best_note}); train it with "
                   f"`recsearch train --config {best_config}`."), ""]
    else:
        lines += [f"No `{BEST_CONFIG}`: {best_note}", ""]

    lines += [f"## Pareto front ({m} vs {k})", ""]
    if rep.front.points:
        lines += [f"| trial | kind | {m} | {k} | decisions |", "|---:|---|---:|---:|---|"]
        by_id = {r.trial_id: r for r in rep.rows}
        for p in rep.front.points:
            r = by_id[p.trial_id]
            lines.append(f"| {r.trial_id} | {r.kind} | {fmt(r.value(rep.metric))} | {fmt(r.value(rep.cost_key))} | {_cell(r.summary)} |")
        lines.append("")
    lines.append(f"{len(rep.front.points)} of {rep.front.considered} trained trials are on the front"
                 + (f"; {len(rep.front.missing)} complete trial(s) lack a number: {list(rep.front.missing)}" if rep.front.missing else "")
                 + ".")
    if "pareto" in plots:
        lines += ["", f"![Pareto front]({plots['pareto'].name})"]
    if "auc_vs_trial" in plots:
        lines += ["", f"![{m} vs trial]({plots['auc_vs_trial'].name})"]
    lines += ["", "## Parameter importance", ""]
    if rep.importance is not None:
        imp = rep.importance
        lines += [f"{imp.method}, for {LABELS[imp.metric]} over {imp.n_trials} complete candidates (shares sum to 1).", "",
                  "| decision | importance |", "|---|---:|"]
        lines += [f"| {name} | {score:.3f} |" for name, score in imp.scores]
        if imp.constant:
            lines += ["", "Not ranked (one value in every trial): " + ", ".join(imp.constant) + "."]
        if "importance" in plots:
            lines += ["", f"![parameter importance]({plots['importance'].name})"]
    else:
        lines.append(rep.importance_note or "")
    lines += ["", "## Trials", "",
              f"| trial | kind | state | decisions | {m} | log loss | NE | {k} | est. cost (ms) | rows | wall (s), all rungs | error |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rep.rows:
        lines.append(
            f"| {r.trial_id} | {r.kind} | {r.state_label} | {_cell(r.summary)} | {fmt(r.value(rep.metric))} | "
            f"{fmt(r.log_loss)} | {fmt(r.ne)} | {fmt(r.value(rep.cost_key))} | {fmt(r.est_step_cost_ms)} | "
            f"{r.train_rows if r.train_rows is not None else '-'} | {fmt(r.wall_s, 1)} | {_cell(r.error)} |"
        )
    return "\n".join(lines) + "\n"


def summary_dict(rep: Report, best_config: Path | None) -> dict[str, Any]:
    def row(r: TrialRow | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"trial_id": r.trial_id, "kind": r.kind, "state": r.state_label, "auc": r.auc,
                "test_auc": r.test_auc, "log_loss": r.log_loss, "ne": r.ne, "latency_p50_ms": r.latency_p50_ms,
                "latency_p99_ms": r.latency_p99_ms, "est_step_cost_ms": r.est_step_cost_ms,
                "judged_cost": rep.judged.get(r.trial_id), "reward": r.reward, "wall_s": r.wall_s,
                "params": r.params, "error": r.error,
                "created_at_s": r.created_at_s}
    return {
        "search_dir": str(rep.search_dir), "metric": rep.metric, "cost_key": rep.cost_key,
        "counts": rep.counts.__dict__, "budget_trials": rep.budget_trials, "elapsed_s": rep.elapsed_s,
        "compute_s": rep.compute_s, "budget": {"key": rep.budget.key, "limit": rep.budget.limit, "source": rep.budget.source},
        "best": row(rep.best), "best_overall": row(rep.best_overall), "reference": row(rep.reference),
        "pareto_front": list(rep.front.trial_ids), "bayes_auc": rep.bayes_auc,
        "importance": dict(rep.importance.scores) if rep.importance else None,
        "best_config": str(best_config) if best_config else None,
        "trials": [row(r) for r in rep.rows],
    }


# ---- plots ---------------------------------------------------------------------------------------
def plot_pareto(rep: Report, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    trained = [r for r in rep.rows if r.kind in (CANDIDATE, REFERENCE) and r.state is TrialState.COMPLETE
               and r.value(rep.metric) is not None and r.value(rep.cost_key) is not None]
    if not trained:
        return None
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.subplots()
    cands = [r for r in trained if r.kind == CANDIDATE]
    ax.scatter([r.value(rep.cost_key) for r in cands], [r.value(rep.metric) for r in cands],
               s=22, c="#9aa4b1", label="trial")
    front_ids = set(rep.front.trial_ids)
    front = [r for r in trained if r.trial_id in front_ids]
    front.sort(key=lambda r: (r.value(rep.cost_key), r.trial_id))
    ax.step([r.value(rep.cost_key) for r in front], [r.value(rep.metric) for r in front], where="post",
            color="#d1495b", lw=1.2)
    ax.scatter([r.value(rep.cost_key) for r in front], [r.value(rep.metric) for r in front], s=40,
               c="#d1495b", label="Pareto front", zorder=3)
    for r in front:
        ax.annotate(str(r.trial_id), (r.value(rep.cost_key), r.value(rep.metric)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if rep.reference is not None and rep.reference in trained:
        ref = rep.reference
        ax.scatter([ref.value(rep.cost_key)], [ref.value(rep.metric)], marker="*", s=160, c="#edae49",
                   edgecolors="black", label="reference config", zorder=4)
    if rep.budget.limit is not None:
        ax.axvline(rep.budget.limit, color="black", ls=":", lw=1, label="budget")
    ax.set_xlabel(LABELS[rep.cost_key])
    ax.set_ylabel(LABELS[rep.metric])
    ax.set_title(f"{LABELS[rep.metric]} vs {LABELS[rep.cost_key]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_auc_vs_trial(rep: Report, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    cands = [r for r in rep.rows if r.kind == CANDIDATE]
    done = [r for r in cands if r.state is TrialState.COMPLETE and r.value(rep.metric) is not None]
    if not done:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.subplots()
    ax.scatter([r.trial_id for r in done], [r.value(rep.metric) for r in done], s=20, c="#00798c", label="complete")
    early = [r for r in cands if r.state is TrialState.PRUNED and r.value(rep.metric) is not None]
    if early:
        ax.scatter([r.trial_id for r in early], [r.value(rep.metric) for r in early], s=20, facecolors="none",
                   edgecolors="#9aa4b1", label="stopped early (fewer rows)")
    xs, best, ys = [], None, []
    better = (lambda a, b: a > b) if METRICS[rep.metric] else (lambda a, b: a < b)
    for r in done:
        v = r.value(rep.metric)
        best = v if best is None or better(v, best) else best
        xs.append(r.trial_id)
        ys.append(best)
    ax.step(xs, ys, where="post", color="#d1495b", lw=1.5, label="best so far")
    failed = [r for r in cands if r.state is TrialState.FAILED]
    if failed:
        low = min(r.value(rep.metric) for r in done)
        ax.scatter([r.trial_id for r in failed], [low] * len(failed), marker="x", c="black", label="failed (no AUC)")
    ref = rep.reference
    if ref is not None and ref.value(rep.metric) is not None:
        ax.axhline(ref.value(rep.metric), color="#edae49", ls="--", lw=1.2, label="reference config")
    if rep.bayes_auc is not None and rep.metric == "auc":
        ax.axhline(rep.bayes_auc, color="black", ls=":", lw=1, label="Bayes ceiling")
    ax.set_xlabel("trial")
    ax.set_ylabel(LABELS[rep.metric])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_importance(imp: Importance, path: Path) -> Path:
    from matplotlib.figure import Figure

    names = [n for n, _ in imp.scores][::-1]
    scores = [s for _, s in imp.scores][::-1]
    fig = Figure(figsize=(6.0, 0.35 * len(names) + 1.2), dpi=120)
    ax = fig.subplots()
    ax.barh(names, scores, color="#00798c")
    ax.set_xlabel(f"importance for {LABELS[imp.metric]} (PED-ANOVA, {imp.n_trials} trials)")
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---- best_train.yaml -----------------------------------------------------------------------------
def export_best(search: SearchDir, rep: Report, out: Path) -> tuple[Path | None, str]:
    """Write the best trial's exact train config as a ready `recsearch train` file (validated by
    the trainer's own config loader). Returns (path or None, what was exported or why not)."""
    best = rep.best or rep.best_overall
    if best is None:
        return None, "no complete candidate to export"
    which = "best within the budget" if best is rep.best else f"best overall: none is within the {LABELS[rep.cost_key]} budget"
    record = next(r for r in search.records if r.trial_id == best.trial_id)
    trial_dir = search.trial_dir(best.trial_id)
    trial_yaml = trial_dir / TRIAL_CONFIG
    if trial_yaml.is_file():
        raw = yaml.safe_load(trial_yaml.read_text()) or {}
        origin = str(trial_yaml)
    else:
        from recsearch import config

        base = dict(search.config.get("base") or {})
        if not base:
            return None, f"{trial_yaml} is missing and search.yaml has no base config to rebuild it from"
        raw = {**base, "arch": config.to_dict(record.spec.arch), "hparams": config.to_dict(record.spec.hparams),
               "train_rows": record.spec.train_rows}
        origin = f"{search.path / 'search.yaml'} base + trial {best.trial_id}'s decisions"
    raw["output_dir"] = str((search.path / "best_run").resolve())
    raw.pop("resume_from", None)
    # the search's device lock (its trials' latency timing) is no business of a run on its own, and
    # after the search directory moved it would make the trainer recreate the old path
    raw.pop("device_lock", None)
    warning = ""
    plan = raw.get("plan")
    if plan and plan != "torchrec":
        plan_path = _placement_file(Path(plan), trial_dir)
        if plan_path is not None:
            shutil.copyfile(plan_path, out / BEST_PLACEMENT)
            raw["plan"] = str((out / BEST_PLACEMENT).resolve())
        else:
            raw["plan"] = "torchrec"
            warning = (f"warning: trial {best.trial_id}'s placement is lost (neither {plan} nor "
                       f"{trial_dir / Path(plan).name} exists): plan set to torchrec, so TorchRec's planner "
                       f"places the tables, not the placement the search checked and trained")
            warnings.warn(f"{out / BEST_CONFIG}: {warning}", UserWarning, stacklevel=2)
    header = (
        f"# Used by: recsearch train --config {out / BEST_CONFIG}\n"
        f"# Trial {best.trial_id} of the search in {search.path} ({which}): "
        f"{LABELS[rep.metric]} {fmt(best.value(rep.metric))}, {LABELS[rep.cost_key]} {fmt(best.value(rep.cost_key))}.\n"
        f"# From {origin}. train_rows is the search's fidelity; set train_rows=null to train on all rows.\n"
        + (f"# {warning[0].upper()}{warning[1:]}.\n" if warning else "")
    )
    path = out / BEST_CONFIG
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    _validate_train_config(path, record)
    return path, f"trial {best.trial_id}, {which}" + (f"; {warning}" if warning else "")


def _placement_file(plan: Path, trial_dir: Path) -> Path | None:
    """The trial's placement file: the path its trial.yaml names (absolute: where the search
    directory was when the trial ran), else the file of that name in the trial's directory now
    (the search directory was moved or copied), else None."""
    for candidate in ([plan] if plan.is_absolute() else []) + [trial_dir / plan.name]:
        if candidate.is_file():
            return candidate
    return None


def _validate_train_config(path: Path, record: Any) -> None:
    """Load the file with the trainer's loader: a config the trainer would refuse is a bug here."""
    from recsearch import config
    from recsearch.train.config import TrainConfig

    cfg = config.load(TrainConfig, path)
    if cfg.arch != record.spec.arch or cfg.hparams != record.spec.hparams:
        raise ValueError(f"{path}: exported config does not match trial {record.trial_id}'s architecture")


# ---- entry point ---------------------------------------------------------------------------------
def write_report(search_dir: Path | str, out: Path | str | None = None, metric: str = "auc",
                 cost_key: str = "latency_p50_ms", min_importance_trials: int = MIN_TRIALS) -> Report:
    """Read the search, write every report file under `out` (default <search_dir>/report)."""
    search = read_search(search_dir)
    rep = build_report(search, metric, cost_key, min_importance_trials)
    out = Path(out) if out is not None else search.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    for name, make in (("pareto", plot_pareto), ("auc_vs_trial", plot_auc_vs_trial)):
        target = out / f"{name}.png"
        if make(rep, target) is not None:
            plots[name] = target
        elif target.exists():
            target.unlink()  # a stale plot from an earlier report would contradict this one
    if rep.importance is not None:
        plots["importance"] = plot_importance(rep.importance, out / "importance.png")
    elif (out / "importance.png").exists():
        (out / "importance.png").unlink()
    best_config, note = export_best(search, rep, out)
    if best_config is None and (out / BEST_CONFIG).exists():
        (out / BEST_CONFIG).unlink()
    (out / "report.md").write_text(render_markdown(rep, plots, best_config, note))
    (out / "summary.json").write_text(json.dumps(summary_dict(rep, best_config), indent=1, default=str) + "\n")
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsearch report", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("search_dir", metavar="DIR", help="a search directory (recsearch search --out)")
    parser.add_argument("--out", help="where to write the report (default DIR/report)")
    parser.add_argument("--metric", default="auc", choices=sorted(METRICS), help="what ranks trials (default auc: validation AUC)")
    parser.add_argument("--latency-key", default="latency_p50_ms", choices=list(COSTS),
                        help="the cost axis of the Pareto front and the budget (default latency_p50_ms)")
    parser.add_argument("--min-importance-trials", type=int, default=MIN_TRIALS,
                        help=f"complete trials needed for parameter importance (default {MIN_TRIALS})")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also (re)write the HParams dashboard entries in DIR/tensorboard (idempotent)")
    args = parser.parse_args(argv)
    try:
        rep = write_report(args.search_dir, args.out, args.metric, args.latency_key, args.min_importance_trials)
        if args.tensorboard:
            from recsearch.search import tb

            written = tb.log_all(args.search_dir, list(read_search(args.search_dir).records))
            print(f"[report] tensorboard: {written} HParams entries written in {Path(args.search_dir) / tb.TB_DIR}")
    except (NoSearchError, ValueError) as err:
        print(f"recsearch report: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.search_dir) / "report"
    c = rep.counts
    best = rep.best or rep.best_overall
    print(f"[report] {c.trained} trained ({c.complete} complete, {c.failed} failed, {c.pruned} pruned"
          + (f", {c.undecided} not decided yet" if c.undecided else "")
          + f"), {c.running} running, {c.rejected} rejected; best: "
          + (f"trial {best.trial_id} {LABELS[rep.metric]} {fmt(best.value(rep.metric))}" if best else "none")
          + f"; {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
