"""Leave-one-family-out benchmark of the learned placer (issue 14, target 1).

    python tools/bench_place_families.py --work WORK [--families ...] [--samples 150] [--jobs 2]
        [--epochs 800] [--policy-minutes 3] [--rounds 1] [--device cpu|cuda] [--out-md docs/BENCHMARKS.md]

On a GPU (`--device cuda`: the shipped H100 samples' settings, tables up to 4 GiB, sampling and
evaluation one process at a time) a 15-minute window fits part of it: `--sample-minutes 1
--samples 100` samples each family for a minute; every stage resumes, so the next window goes on.

For every table family (recsearch.placement.families): a cost net and a policy trained WITHOUT
that family, then every baseline and the learned placer measured on the family's tasks. Stages,
each resumable (work already in WORK is kept and skipped; a rerun continues):

1. pools:    WORK/pools/<family>.json (the family's tables) and WORK/tasks/<family>/*.json
             (three tasks per family, families.FAMILY_TASK_SHAPES).
2. samples:  WORK/samples/<family>.jsonl: `recsearch place measure --pool` single-device samples
             (random sets of 1..40 of the family's tables, batch 4,096, kernel thread clock).
3. per held-out family F, in WORK/lofo/F/:
             cost_net  trained on the other families' samples (`place cost-net train`, F's samples
                       as --test-samples: the held-out error);
             policy    trained on tasks drawn from the other families, each task from one family
                       (`place policy train --pool <their pools>`);
             eval.json `place eval` of F's tasks with every baseline, learned and learned_kK,
                       measured (thread clock), with this cost net and policy.
4. report:   per family and overall: learned_kK's measured cost / the task's cheapest baseline
             (mean and worst), / the single best baseline method, cost-net error on F's samples
             and on F's evaluated placements; written to WORK/report.json and, with --out-md,
             the `place_families` section of that file.

Each command runs as its own process (argument lists, no shell), --jobs at a time; the kernel
thread clock keeps measurements of concurrent jobs apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_place_families.py`: make recsearch importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from recsearch import benchmd  # noqa: E402
from recsearch.placement.cost_net import fwd_step_dims_for_batch  # noqa: E402
from recsearch.placement.evaluate import BASELINES  # noqa: E402
from recsearch.placement.families import FamilySettings, family_names, save_family  # noqa: E402

SECTION = {"cpu": "place_families", "cuda": "place_families_gpu"}
RECSEARCH = [sys.executable, "-m", "recsearch.cli"]


@dataclass(frozen=True)
class DeviceProfile:
    """How kernels are timed on a device: the CPU's settings are the shipped CPU samples' (batch
    4,096, kernel thread clock), the GPU's the shipped H100 samples' (batch 65,536, CUDA events,
    5 warm-up and 20 timed iterations); a GPU keeps tables up to 4 GiB of weights."""

    device: str
    batch_size: int
    warmup: int
    iters: int
    clock_args: tuple[str, ...]
    max_table_bytes: int
    fwd_step_dims: str  # the cost nets' `--fwd-step-dims` (the CPU's 32 MiB output step; none on CUDA)


PROFILES = {
    "cpu": DeviceProfile("cpu", 4096, 3, 10, ("--clock", "thread"), 256 * 2**20, "auto"),
    "cuda": DeviceProfile("cuda", 65536, 5, 20, (), 4 * 2**30, "0"),
}


@dataclass(frozen=True)
class Settings:
    work: Path
    families: tuple[str, ...]
    samples: int
    max_tables: int
    jobs: int
    epochs: int
    policy_minutes: float
    policy_iters: int
    rounds: int
    samples_k: int
    seed: int
    profile: DeviceProfile = PROFILES["cpu"]
    sample_minutes: float = 0.0  # per family's sampling command; 0: until --samples
    fwd_step_dims: str = "0"  # `place cost-net train --fwd-step-dims`
    linear_work: float = 0.0  # `place cost-net train --linear-work`


def _run(cmd: Sequence[str], log: Path) -> None:
    """Run one command, its output into log; a failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, check=False)
    took = time.perf_counter() - t0
    print(f"[{time.strftime('%H:%M:%S')}] {'ok ' if proc.returncode == 0 else 'FAILED'} {took:6.0f} s  {shlex.join(cmd[3:6])} ... ({log})", flush=True)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{tail}")


def stage_pools(s: Settings) -> None:
    for name in s.families:
        save_family(s.work, name, FamilySettings(seed=s.seed, max_table_bytes=s.profile.max_table_bytes),
                    compute_device=s.profile.device)


def sample_file(s: Settings, name: str) -> Path:
    return s.work / "samples" / f"{name}.jsonl"


def _sample_cmd(s: Settings, name: str) -> list[str]:
    return [*RECSEARCH, "place", "measure", "--pool", str(s.work / "pools" / f"{name}.json"),
            "--samples", str(s.samples), "--out", str(sample_file(s, name)), "--device", s.profile.device,
            "--batch-size", str(s.profile.batch_size), "--warmup", str(s.profile.warmup), "--iters",
            str(s.profile.iters), "--max-tables", str(s.max_tables), "--seed", str(s.seed + 11),
            *s.profile.clock_args, "--no-progress", *(["--minutes", str(s.sample_minutes)] if s.sample_minutes else [])]


def _check_kept_net(net: Path, s: Settings) -> None:
    """A cost net already in the work folder is kept: refuse one trained with another
    --fwd-step-dims than asked for (its policy and evaluation would not be what the run says)."""
    shape = json.loads(net.with_suffix(".json").read_text()).get("shape", {})
    have = int(shape.get("fwd_step_dims", 0))
    want = fwd_step_dims_for_batch(s.profile.batch_size) if s.fwd_step_dims == "auto" else int(s.fwd_step_dims)
    if have != want:
        raise SystemExit(
            f"{net}: trained with --fwd-step-dims {have}, this run asks for {want}; use another --work "
            "or delete that family's lofo folder to retrain"
        )
    if float(shape.get("linear_work", 0.0)) != s.linear_work:
        raise SystemExit(
            f"{net}: trained with --linear-work {shape.get('linear_work', 0.0)}, this run asks for "
            f"{s.linear_work:g}; use another --work or delete that family's lofo folder to retrain"
        )


def _train_without(s: Settings, held: str) -> None:
    """The cost net and the policy trained without one family."""
    out = s.work / "lofo" / held
    out.mkdir(parents=True, exist_ok=True)
    others = [f for f in s.families if f != held]
    net = out / "cost_net"
    if net.with_suffix(".pt").exists():
        _check_kept_net(net, s)
    else:
        _run([*RECSEARCH, "place", "cost-net", "train", "--samples", *(str(sample_file(s, f)) for f in others),
              "--test-samples", str(sample_file(s, held)), "--out", str(net), "--epochs", str(s.epochs),
              "--seed", str(s.seed), "--fwd-step-dims", s.fwd_step_dims, "--linear-work", f"{s.linear_work:g}"],
             out / "cost_net.log")
    policy = out / "policy"
    if not policy.with_suffix(".pt").exists():
        pools = [str(s.work / "pools" / f"{f}.json") for f in others]  # each training task from one family
        _run([*RECSEARCH, "place", "policy", "train", "--cost-net", str(net), "--pool", *pools,
              "--out", str(policy), "--iters", str(s.policy_iters), "--minutes", str(s.policy_minutes),
              "--seed", str(s.seed)], out / "policy.log")


def _eval_held_out(s: Settings, held: str) -> None:
    """The held-out family's tasks measured with every method, its cost net and policy."""
    out = s.work / "lofo" / held
    net, policy = out / "cost_net", out / "policy"
    result = out / "eval.json"
    if not result.exists():
        _run([*RECSEARCH, "place", "eval", "--tasks", str(s.work / "tasks" / held), "--device", s.profile.device,
              *s.profile.clock_args, "--warmup", str(s.profile.warmup), "--iters", str(s.profile.iters),
              "--rounds", str(s.rounds), "--cost-net", str(net), "--policy", str(policy),
              "--methods", ",".join([*BASELINES, *_methods(f"learned_k{s.samples_k}")]), "--no-timing",
              "--out", str(result)], out / "eval.log")


def run_stages(s: Settings, stop_after: str | None = None, held_out: Sequence[str] = ()) -> None:
    stage_pools(s)
    if stop_after == "pools":
        return
    if held_out:  # only those chains: the samples must be there (another run may still be adding to them)
        missing = [f for f in s.families if not sample_file(s, f).exists()]
        if missing:
            raise SystemExit(f"--held-out needs the samples of every family; missing: {', '.join(missing)}")
    else:
        with ThreadPoolExecutor(s.jobs if s.profile.device == "cpu" else 1) as ex:
            list(ex.map(lambda f: _run(_sample_cmd(s, f), s.work / "samples" / f"{f}.log"), s.families))
    if stop_after == "samples":
        return
    chosen = list(held_out or s.families)
    with ThreadPoolExecutor(s.jobs) as ex:
        list(ex.map(lambda f: _train_without(s, f), chosen))
    # one GPU is timed by one process at a time; the CPU's thread clock keeps concurrent jobs apart
    with ThreadPoolExecutor(s.jobs if s.profile.device == "cpu" else 1) as ex:
        list(ex.map(lambda f: _eval_held_out(s, f), chosen))


# --------------------------------------------------------------------------------------------
# Report


# what LearnedShardingPlanner returns by default (registry.learned_or_better): the greedy learned
# placement checked against the baselines under the cost net, then refined
PLANNER_DEFAULT = "refined_best_learned"


# LearnedShardingPlanner(data_parallel=True): the same, and small tables replicated where the
# cost net says it pays (replicate.py); dp_dim_greedy: that replication around dim_greedy alone
# (the ablation: how much of the dp_ gain is replication without the policy)
PLANNER_DP = "dp_" + PLANNER_DEFAULT
DP_ABLATION = "dp_dim_greedy"


def _methods(learned: str) -> tuple[str, ...]:
    """The learned methods measured and reported: the policy greedy and with K samples, each
    checked against the baselines (best_) and then refined (refined_best_); the planner's two
    refined ones with replication (dp_), and the replication ablation."""
    return ("learned", learned, "best_learned", PLANNER_DEFAULT, f"best_{learned}", f"refined_best_{learned}",
            PLANNER_DP, f"dp_refined_best_{learned}", DP_ABLATION)


def family_summary(eval_json: dict, net_json: dict, learned: str, policy_json: dict | None = None) -> dict:
    """One held-out family: per task learned / cheapest baseline, learned / the best baseline
    method, the cost net's errors."""
    rows = eval_json["rows"]
    summary = eval_json["summary"]["measured_ms"]
    best_method = summary["best_baseline"]
    tasks = []
    for row in rows:
        res = row["results"]
        base = {m: res[m]["measured_ms"] for m in BASELINES if "measured_ms" in res.get(m, {})}
        cheapest = min(base, key=base.__getitem__)
        entry = {"task": row["task"], "cheapest_baseline": cheapest, "cheapest_ms": round(base[cheapest], 3)}
        for m in _methods(learned):
            if "measured_ms" in res.get(m, {}):
                entry[f"{m}_vs_task_best"] = round(res[m]["measured_ms"] / base[cheapest], 4)
                entry[f"{m}_vs_best_method"] = round(res[m]["measured_ms"] / base[best_method], 4)
        tasks.append(entry)
    tests = list(net_json.get("metrics", {}).get("test", {}).values())  # the held-out family's samples
    test = tests[0]["errors"] if tests else {}
    return {
        "best_baseline_method": best_method,
        "tasks": tasks,
        "cost_net_epochs": net_json.get("metrics", {}).get("epochs"),
        "cost_net_train_samples": net_json.get("metrics", {}).get("samples"),
        "policy_iters": (policy_json or {}).get("iters_done"),
        "policy_seconds": (policy_json or {}).get("train_seconds"),
        "cost_net_heldout_samples_mre": test.get("total"),
        "cost_net_placement_mre": eval_json.get("cost_net_placement_error", {}).get("mre"),
        "cost_net_placement_compute_mre": eval_json.get("cost_net_placement_error", {}).get("compute_mre"),
    }


def report(s: Settings) -> dict:
    learned = f"learned_k{s.samples_k}"
    per_family = {}
    for name in s.families:
        out = s.work / "lofo" / name
        if not (out / "eval.json").exists():
            continue
        per_family[name] = family_summary(json.loads((out / "eval.json").read_text()),
                                          json.loads((out / "cost_net.json").read_text()), learned,
                                          json.loads((out / "policy.json").read_text()))
    all_tasks = [t for f in per_family.values() for t in f["tasks"]]
    overall = {}
    for m in _methods(learned):
        vs_task = [t[f"{m}_vs_task_best"] for t in all_tasks if f"{m}_vs_task_best" in t]
        vs_method = [t[f"{m}_vs_best_method"] for t in all_tasks if f"{m}_vs_best_method" in t]
        if vs_task:
            overall[m] = {"mean_vs_task_best": round(float(np.mean(vs_task)), 4),
                          "worst_vs_task_best": round(float(np.max(vs_task)), 4),
                          "mean_vs_best_method": round(float(np.mean(vs_method)), 4),
                          "tasks_over_1_02": int(sum(v > 1.02 for v in vs_task)), "tasks": len(vs_task)}
    return {"families": per_family, "overall": overall, "learned_method": learned}


def _values(rep: dict, key: str) -> str:
    """The distinct values of a per-family key, e.g. '2000' or '800 / 2000'."""
    got = sorted({f[key] for f in rep["families"].values() if f.get(key) is not None})
    return " / ".join(str(v) for v in got) or "n/a"


def markdown(rep: dict, s: Settings, command: str, elapsed_min: float, notes: Sequence[str] = ()) -> str:
    learned = rep["learned_method"]
    lines = [
        f"## Learned placement on table families it never saw ({SECTION[s.profile.device]})",
        "",
        f"- date: {date.today().isoformat()}; machine: {platform.processor() or platform.machine()}, "
        + ("this shared 2-core CPU; kernels timed by the kernel thread's CPU time, batch 4,096"
           if s.profile.device == "cpu" else f"CUDA events, batch {s.profile.batch_size:,}"),
        f"- command: `{command}` ({elapsed_min:.0f} min of this run; stages already in the work folder were kept)",
        f"- protocol: for each family F, a cost net trained on {s.samples} measured samples of each OTHER family "
        f"({_values(rep, 'cost_net_epochs')} epochs) and a policy trained on tasks each drawn from one of the other "
        f"families ({_values(rep, 'policy_iters')} PPO iterations, at most {s.policy_minutes:g} min), then every "
        f"baseline and the learned methods measured on F's 3 tasks ({s.rounds} interleaved round(s)): `learned` "
        f"(the policy, greedy), `{learned}` (and {s.samples_k} sampled placements, the cheapest under the cost net), "
        f"`best_` in front (checked against the five fast baselines' placements under the cost net, the cheapest "
        f"kept) and `refined_best_` in front (that, then single-table moves and two-table exchanges while the cost "
        f"net says the step gets cheaper, `refine.py`). `{PLANNER_DEFAULT}` is what LearnedShardingPlanner "
        f"returns by default; `dp_` in front: small tables replicated (data-parallel) where the cost net says it "
        f"pays (`replicate.py`, LearnedShardingPlanner(data_parallel=True)); `{DP_ABLATION}`: that replication "
        "around dim_greedy alone, an ablation. The baselines include `torchrec_dp`, TorchRec's planner allowed "
        "data_parallel as well as table_wise. Ratios are measured cost / the cheapest baseline on that task (the per-task best) "
        "and / the baseline method with the lowest mean ratio on that family (the single best method). "
        "Cost-net errors: mean relative error on F's own samples, and on F's measured placements (step total, "
        "whose all-to-all is modeled exactly; the slowest device's compute).",
        "",
        f"| held-out family | best baseline method | {PLANNER_DP} / task best (mean, worst) | {PLANNER_DEFAULT} "
        f"| refined_best_{learned} | best_learned | {learned} | learned | {DP_ABLATION} | {PLANNER_DEFAULT} / best method "
        "| cost-net error: F's samples | F's placements: total, slowest compute |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    for name, fam in rep["families"].items():
        def cell(method: str) -> str:
            got = [t[f"{method}_vs_task_best"] for t in fam["tasks"] if f"{method}_vs_task_best" in t]
            return f"{np.mean(got):.3f}, {max(got):.3f}" if got else "n/a"

        m = [t[f"{PLANNER_DEFAULT}_vs_best_method"] for t in fam["tasks"] if f"{PLANNER_DEFAULT}_vs_best_method" in t]
        lines.append(
            f"| {name} | {fam['best_baseline_method']} | {cell(PLANNER_DP)} | {cell(PLANNER_DEFAULT)} "
            f"| {cell('refined_best_' + learned)} | {cell('best_learned')} | {cell(learned)} | {cell('learned')} "
            f"| {cell(DP_ABLATION)} "
            f"| {np.mean(m):.3f} | {pct(fam['cost_net_heldout_samples_mre'])} "
            f"| {pct(fam['cost_net_placement_mre'])}, {pct(fam['cost_net_placement_compute_mre'])} |"
        )
    lines.append("")
    for m, o in rep["overall"].items():
        lines.append(
            f"- **{m}, all {o['tasks']} held-out tasks**: {o['mean_vs_task_best']:.3f} of the per-task best "
            f"baseline on average (worst {o['worst_vs_task_best']:.3f}; {o['tasks_over_1_02']} tasks above 1.02), "
            f"{o['mean_vs_best_method']:.3f} of each family's best baseline method. Target: <= 0.92 on average, no task above 1.02."
        )
    lines.append("- per task (which baseline was cheapest, ratios): `docs/results/place_families.json`.")
    lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_place_families", description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="work folder (resumable)")
    p.add_argument("--families", nargs="+", default=list(family_names()), choices=list(family_names()))
    p.add_argument("--samples", type=int, default=150, help="measured samples per family")
    p.add_argument("--max-tables", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=800)
    p.add_argument("--policy-minutes", type=float, default=3.0)
    p.add_argument("--policy-iters", type=int, default=600)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--samples-k", type=int, default=16, help="K of learned_kK")
    p.add_argument("--fwd-step-dims",
                   help="cost nets: `place cost-net train --fwd-step-dims` (N, auto, 0: off; default: auto on cpu, "
                        "0 on cuda)")
    p.add_argument("--linear-work", type=float, default=0.0,
                   help="cost nets: `place cost-net train --linear-work B` (0: off; the net's per-table cost bounded "
                        "around a line in its work, CostNetShape.linear_work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=tuple(PROFILES), help="where kernels are timed")
    p.add_argument("--sample-minutes", type=float, default=0.0,
                   help="stop each family's sampling after this long (a rerun continues); 0: --samples each")
    p.add_argument("--held-out", nargs="+", default=[], choices=list(family_names()),
                   help="only the cost net / policy / eval chains of these held-out families, on the samples already "
                        "there (no sampling stage; default: every family, after sampling)")
    p.add_argument("--stop-after", choices=("pools", "samples"), help="stop after this stage")
    p.add_argument("--report-only", action="store_true", help="only write the report from what WORK holds")
    p.add_argument("--out-json", default="docs/results/place_families.json")
    p.add_argument("--out-md", help="markdown file whose place_families section to write")
    p.add_argument("--note", action="append", default=[], help="a line for the section's notes (repeatable)")
    args = p.parse_args(argv)
    s = Settings(Path(args.work), tuple(args.families), args.samples, args.max_tables, args.jobs, args.epochs,
                 args.policy_minutes, args.policy_iters, args.rounds, args.samples_k, args.seed,
                 PROFILES[args.device], args.sample_minutes,
                 args.fwd_step_dims or PROFILES[args.device].fwd_step_dims, args.linear_work)
    t0 = time.perf_counter()
    if not args.report_only:
        run_stages(s, args.stop_after, args.held_out)
        if args.stop_after:
            return 0
    rep = report(s)
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(rep, indent=1) + "\n")
    print(json.dumps(rep["overall"], indent=1))
    if args.out_md:
        command = shlex.join(["python", "tools/bench_place_families.py", *(argv if argv is not None else sys.argv[1:])])
        benchmd.write_section(Path(args.out_md), SECTION[s.profile.device], markdown(rep, s, command, (time.perf_counter() - t0) / 60, args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
