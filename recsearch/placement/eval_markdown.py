"""The `place eval` results as a markdown section (docs/BENCHMARKS.md `place_eval`): settings,
summary per method, the lower bound, the cost net's error, planning times and the per-task table.
Reads the results JSON structure (`evaluate.EvalReport.to_dict`).
"""

from __future__ import annotations

from typing import Any

from recsearch.placement.evaluate import BASELINES, is_learned_method


def task_ratios(
    row: dict[str, Any], method: str, best_baseline: str | None, key: str
) -> tuple[float | None, float | None]:
    """(cost / best baseline method's, cost / the task's cheapest baseline) of one method on one
    task; None where either side has no result."""
    results = row["results"]
    mine = results.get(method, {}).get(key)
    base = [r[key] for m, r in results.items() if m in BASELINES and key in r]
    if mine is None or not base:
        return None, None
    best = results.get(best_baseline or "", {}).get(key)
    return (mine / best if best else None), mine / min(base)


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark section: settings, summary per method, per-task table with the learned
    methods' ratios to the best baseline method and to the task's cheapest baseline."""
    methods = report["methods"]
    lines = [f"## {report['title']}", ""]
    lines += [f"- {line}" for line in report["notes"]]
    lines.append("")
    for label, key in (("measured", "measured_ms"), ("cost-net estimate", "estimate_ms")):
        s = report["summary"].get(key)
        if not s or not s["tasks"]:
            continue
        lines.append(
            f"**Summary, {label} cost** ({s['tasks']} tasks; best baseline method: "
            f"`{s['best_baseline']}`; ratio < 1 is cheaper):"
        )
        lines.append("")
        lines.append(
            "| method | mean cost (ms) | cost / best baseline | cost / per-task best baseline "
            "| tasks cheaper than best baseline | infeasible | mean planning time (ms) |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for m in methods:
            v = s["methods"].get(m, {})
            if not v.get("tasks"):
                lines.append(f"| {m} | - | - | - | - | {v.get('infeasible', '-')} | - |")
                continue
            lines.append(
                f"| {m} | {v['mean_ms']:.3f} | {v['ratio_vs_best_baseline']:.3f} | "
                f"{v['ratio_vs_task_best']:.3f} | {v['wins_vs_best_baseline']}/{v['tasks']} | "
                f"{v['infeasible']} | {v['mean_plan_ms']} |"
            )
        lines.append("")
    bound = report.get("bound")
    if bound and bound.get("tasks"):
        lines.append(
            f"**Room left: measured cost / the task's lower bound** (mean over {bound['tasks']} "
            "tasks; 1.000 would be a perfect placement; the bound, measured per task, is the "
            "larger of the heaviest table alone and a perfectly balanced share of all tables' "
            "work, plus the least possible all-to-all (`measure_bound` in placement/evaluate.py); "
            f"the heaviest table alone binds on {bound['heaviest_table_binds']} of them): "
            + ", ".join(f"{m} {v:.3f}" for m, v in bound["methods"].items())
        )
        lines.append("")
    err = report.get("cost_net_placement_error")
    if err and err.get("placements"):
        lines.append(
            f"**Cost net vs measurement** over the {err['placements']} distinct placements above "
            f"(tables the net never saw): mean relative error {err['mre']:.1%} of the step cost, "
            f"{err['compute_mre']:.1%} of the slowest device's compute"
            + (  # results written before the bias was recorded have none
                f" (median estimate / measured {err['compute_bias']:.2f})."
                if "compute_bias" in err
                else "."
            )
        )
        lines.append("")
    timing = report.get("planning_200")
    if timing:
        lines.append(
            f"**Planning time**, {timing['tables']} tables on {timing['devices']} devices "
            f"(median of 3, one CPU thread, ms): "
            + ", ".join(f"{m} {v}" for m, v in timing["median_ms"].items())
        )
        lines.append("")
    measured = any("measured_ms" in r for row in report["rows"] for r in row["results"].values())
    key = "measured_ms" if measured else "estimate_ms"
    best = (report["summary"].get(key) or {}).get("best_baseline")
    learned = [m for m in methods if is_learned_method(m)]
    unit = "measured ms (cost-net estimate)" if measured else "cost-net estimate, ms"
    has_bound = any("bound" in row for row in report["rows"])
    lines.append(
        f"**Per task**, {unit}; x = infeasible"
        + ("; lower bound: measured, * where the heaviest table alone binds" if has_bound else "")
        + (
            f"; last columns: learned cost / `{best}` (best baseline method) and / the task's "
            "cheapest baseline"
            if learned and best
            else ""
        )
        + ":"
    )
    lines.append("")
    ratio_heads = [f"{m} / {h}" for m in learned for h in ("best", "task best")] if best else []
    bound_heads = ["lower bound"] if has_bound else []
    heads = [*methods, *bound_heads, *ratio_heads]
    lines.append("| task | tables | devices | " + " | ".join(heads) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(heads))
    for row in report["rows"]:
        cells = []
        for m in methods:
            r = row["results"].get(m, {})
            if not r.get("feasible"):
                cells.append("x")
            elif measured and "measured_ms" in r:
                cells.append(f"{r['measured_ms']:.2f} ({r['estimate_ms']:.2f})")
            else:
                cells.append(f"{r['estimate_ms']:.3f}")
        if has_bound:
            b = row.get("bound")
            star = "*" if b and b["binding"] == "heaviest table" else ""
            cells.append(f"{b['bound_ms']:.2f}{star}" if b else "-")
        if ratio_heads:
            for m in learned:
                vs_best, vs_task = task_ratios(row, m, best, key)
                cells += [f"{v:.3f}" if v is not None else "-" for v in (vs_best, vs_task)]
        lines.append(
            f"| {row['task']} | {row['tables']} | {row['devices']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
