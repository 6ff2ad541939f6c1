"""Trial overhead: the same small search with the subprocess runner and the pool runner, side by side.

    python tools/bench_trial_overhead.py [--trials 8] [--runners subprocess pool] [--rounds 1]
        [--data runs/quickstart/data] [--workdir /tmp/recsearch_bench_overhead] [poll_s etc. as key=value]

Each search is `recsearch search --config configs/search/quickstart.yaml trials=N runner.kind=K`
(the README's quickstart search with fewer trials: two trials at a time, one thread each, 100k
then 300k rows, the reference first), run as a fresh process, one after the other; with --rounds
R the runners alternate (subprocess, pool, pool, subprocess, ...). The data is the quickstart's
(`recsearch data synth --config configs/data/quickstart.yaml`, made in --workdir when --data does
not exist).

Measured per trial run (every rung of every trial, the reference included), from the search
directory: its wall time as the search saw it (the journal's wall_s: from submission to the poll
that saw it end) minus its training time (train_seconds in that run's result.json: the training
steps only). That difference is the trial overhead: process start and imports (subprocess), data
loading, model construction, evaluation, the latency measurement, writing results, and the
search's polling delay (up to runner.poll_s). Reported per runner: the median and 90th percentile
overhead, the search's wall time (process start to exit), and the ratios pool / subprocess.

Then, where a warm trial's remaining overhead goes (--breakdown-runs, default 3): one trial of
the pool search (its trial.yaml, the median-overhead one, without the device lock: alone on the
machine) is trained that many times back to back in this process, as a pool worker would, with
the trainer's evaluation and latency measurement timed; the first run, which pays first-call
costs, is shown apart from the median of the others. The section `bench_trial_overhead` of
--out-md is rewritten.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recsearch import benchmd  # noqa: E402
from recsearch.cliargs import list_flag  # noqa: E402
from recsearch.search.store import JournalStore  # noqa: E402
from recsearch.train.result import ResultError, TrainResult  # noqa: E402
from recsearch.types import RESULT_FILE  # noqa: E402

SECTION = "bench_trial_overhead"
SEARCH_CONFIG = REPO / "configs" / "search" / "quickstart.yaml"
DATA_CONFIG = REPO / "configs" / "data" / "quickstart.yaml"
TARGET_OVERHEAD_S = {"cpu": 1.0, "cuda": 1.5}  # issue 13: median trial overhead


@dataclass
class SearchRun:
    runner: str
    round: int
    wall_s: float  # the search process, start to exit
    overheads: list[float]  # per trial run: wall_s - train_seconds
    walls: list[float]
    trains: list[float]
    trained: int  # trial runs measured
    failed: int


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsearch.cli", *args]


def _env(src: Path = REPO) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)}


def ensure_data(data: Path) -> Path:
    if (data / "meta.json").exists():
        return data
    subprocess.run(_cli("data", "synth", "--config", str(DATA_CONFIG), "--out", str(data)), cwd=REPO,
                   env=_env(), check=True)
    subprocess.run(_cli("data", "stats", str(data), "--out", str(data / "stats.json")), cwd=REPO,
                   env=_env(), check=True)
    return data


def run_dirs(trial_dir: Path, rungs: dict) -> dict[str, Path]:
    """rung -> the directory holding that rung's run (a promoted trial's lower rungs are in
    rung_<k>/, its last run in the trial directory)."""
    out = {}
    for rung in rungs:
        lower = trial_dir / f"rung_{rung}"
        out[rung] = lower if lower.is_dir() else trial_dir
    return out


def measure(search_dir: Path) -> tuple[list[float], list[float], int]:
    """(wall_s, train_seconds) of every finished trial run, and how many runs failed."""
    walls, trains, failed = [], [], 0
    for rec in JournalStore(search_dir, read_only=True).trials():
        trial_dir = search_dir / "trials" / str(rec.trial_id)
        if rec.notes.get("rejected"):
            continue
        if rec.notes.get("reference"):
            runs = {"ref": (rec.notes.get("wall_s"), trial_dir)}
        else:
            rungs = rec.notes.get("rungs", {})
            dirs = run_dirs(trial_dir, rungs)
            runs = {k: (v.get("wall_s"), dirs[k]) for k, v in rungs.items()}
        for wall, where in runs.values():
            try:
                result = TrainResult.read(where / RESULT_FILE)
            except ResultError:
                failed += 1
                continue
            train = result.train_seconds
            if not result.ok or wall is None or train is None:
                failed += 1
                continue
            walls.append(float(wall))
            trains.append(float(train))
    return walls, trains, failed


def run_search(runner: str, trials: int, data: Path, out: Path, round_: int, extra: list[str],
               src: Path = REPO, label: str | None = None) -> SearchRun:
    """One search with this runner (extra: key=value overrides, the runner's own last), by the
    recsearch checkout at `src` (another commit's, for a before/after comparison)."""
    label = label or runner
    command = _cli("search", "--config", str(src / SEARCH_CONFIG.relative_to(REPO)), "--out", str(out),
                   f"data_dir={data}", f"trials={trials}", f"runner.kind={runner}", *extra)
    print(f"[bench] {label} (round {round_}): {shlex.join(command[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=src, env=_env(src), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the {runner} search failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    walls, trains, failed = measure(out)
    overheads = [w - t for w, t in zip(walls, trains, strict=True)]
    run = SearchRun(label, round_, wall, overheads, walls, trains, len(walls), failed)
    print(f"[bench] {label}: search {wall:.1f} s, {run.trained} trial runs, median overhead "
          f"{statistics.median(overheads):.2f} s", flush=True)
    return run


@dataclass
class Breakdown:
    trial: str
    runs: list[dict[str, float]]  # per run: total, train, evaluate, latency, other


def breakdown(search_dir: Path, runs: int, threads: int = 1) -> Breakdown | None:
    """Train the median-overhead candidate's config `runs` times in this process (a warm
    worker's view), timing the trainer's evaluation and latency measurement."""
    import contextlib
    import functools
    import io

    import yaml

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from recsearch.train import trainer

    candidates = []
    for rec in JournalStore(search_dir, read_only=True).trials():
        wall, train = rec.notes.get("wall_s"), rec.notes.get("train_seconds")
        if rec.state.finished and wall is not None and train is not None and not rec.notes.get("rejected"):
            candidates.append((wall - train, rec.trial_id))
    if not candidates:
        return None
    candidates.sort()
    picked = candidates[len(candidates) // 2][1]
    raw = yaml.safe_load((search_dir / "trials" / str(picked) / "trial.yaml").read_text())
    raw.pop("device_lock", None)  # alone on the machine: nothing to share the device with
    timers: dict[str, float] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - start
        return call

    originals = {name: getattr(trainer, name) for name in ("evaluate", "measure_latency") if hasattr(trainer, name)}
    for name, fn in originals.items():
        setattr(trainer, name, timed(name, fn))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: list[dict[str, float]] = []
    try:
        for i in range(runs):
            workdir = search_dir.parent / f"{search_dir.name}-breakdown-{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            raw["output_dir"] = str(workdir)
            (workdir / "trial.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            timers.clear()
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = trainer.main(["--config", str(workdir / "trial.yaml")])
            total = time.perf_counter() - start
            result = TrainResult.read(workdir / RESULT_FILE)
            if code != 0:
                raise SystemExit(f"breakdown run {i} failed: {result.error}")
            row = {"total": total, "train": float(result.train_seconds),
                   "evaluate": timers.get("evaluate", 0.0), "latency": timers.get("measure_latency", 0.0)}
            row["other"] = row["total"] - row["train"] - row["evaluate"] - row["latency"]
            out.append(row)
            print(f"[bench] breakdown run {i}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
    finally:
        for name, fn in originals.items():
            setattr(trainer, name, fn)
        torch.set_num_threads(before)
    return Breakdown(f"trial {picked} of {search_dir.name}", out)


def render_breakdown(b: Breakdown) -> list[str]:
    keys = ("total", "train", "evaluate", "latency", "other")
    first = b.runs[0]
    rest = b.runs[1:] or b.runs
    med = {k: statistics.median(r[k] for r in rest) for k in keys}
    def row(label: str, r: dict[str, float]) -> str:
        return (f"| {label} | {r['total']:.2f} | {r['train']:.2f} | {r['total'] - r['train']:.2f} | {r['evaluate']:.2f} "
                f"| {r['latency']:.2f} | {r['other']:.2f} |")
    return [
        "",
        f"Where a warm trial's overhead goes: {b.trial} (the median overhead among trials of the pool search), "
        f"trained {len(b.runs)} times back to back in one process, alone on the machine (no device lock), "
        "seconds per run. `evaluate`: the trainer's final evaluation (its eval_splits); `latency`: its latency "
        "measurement (model and reference timed in rounds until the spread target); `other`: config, data, "
        "model and engine construction, result files.",
        "",
        "| run | total | train | overhead | evaluate | latency | other |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("first (first-call costs)", first),
        row(f"later (median of {len(rest)})", med),
    ]


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def render(runs: list[SearchRun], command: str, setup: str, split: Breakdown | None = None, device: str = "cpu") -> str:
    by_runner: dict[str, list[SearchRun]] = {}
    for run in runs:
        by_runner.setdefault(run.runner, []).append(run)
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for runner, group in by_runner.items():
        overheads = [o for r in group for o in r.overheads]
        walls = [w for r in group for w in r.walls]
        trains = [t for r in group for t in r.trains]
        search_wall = statistics.median(r.wall_s for r in group)
        per_hour = 3600 * sum(r.trained for r in group) / sum(r.wall_s for r in group)
        summary[runner] = {"overhead": statistics.median(overheads), "search": search_wall, "per_hour": per_hour}
        rows.append(
            f"| {runner} | {len(group)} | {sum(r.trained for r in group)} | {statistics.median(overheads):.2f} "
            f"| {_q(overheads, 0.9):.2f} | {statistics.median(walls):.2f} | {statistics.median(trains):.2f} "
            f"| {search_wall:.1f} | {', '.join(f'{r.wall_s:.1f}' for r in group)} | {per_hour:,.0f} |"
        )
    lines = [
        f"## Trial overhead: subprocess vs pool runner ({'CPU' if device == 'cpu' else 'one GPU'})",
        "",
        setup,
        "",
        f"    {command}",
        "",
        "Overhead of a trial run = its wall time as the search saw it (journal `wall_s`, submission to "
        "the poll that saw it end) minus its `train_seconds` (result.json: the training steps). It holds "
        "process start and imports (subprocess runner only), reading the data, building the model, the "
        "final evaluation, the latency measurement, writing the results, and the search's polling delay "
        "(up to `runner.poll_s`). Every rung of every trial and the reference are counted; rejected "
        "candidates never run.",
        "",
        "| runner | searches | trial runs | median overhead (s) | p90 overhead (s) | median trial wall (s) "
        "| median train (s) | search wall (s, median) | each search (s) | trial runs per hour |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        *rows,
    ]
    if "subprocess" in summary and "pool" in summary:
        sub, pool = summary["subprocess"], summary["pool"]
        target = TARGET_OVERHEAD_S[device]
        met = "met" if pool["overhead"] <= target else "not met"
        lines += [
            "",
            f"- pool / subprocess: median trial overhead {pool['overhead']:.2f} s vs {sub['overhead']:.2f} s "
            f"({pool['overhead'] / sub['overhead']:.2f}x), search wall time {pool['search']:.1f} s vs "
            f"{sub['search']:.1f} s ({pool['search'] / sub['search']:.2f}x), trial runs per hour "
            f"{pool['per_hour'] / sub['per_hour']:.2f}x.",
            f"- Issue 13's {'CPU' if device == 'cpu' else 'GPU'} target, median overhead <= {target:.1f} s: {met} "
            f"({pool['overhead']:.2f} s with the pool runner).",
        ]
    before = next((r for r in summary if r.startswith("before")), None)
    if before is not None and "pool" in summary:
        old, pool = summary[before], summary["pool"]
        ratio = pool["search"] / old["search"]
        lines += [
            f"- pool (this commit) / {before}: search wall time {pool['search']:.1f} s vs {old['search']:.1f} s "
            f"({ratio:.2f}x), median trial overhead {pool['overhead']:.2f} s vs {old['overhead']:.2f} s, trial runs "
            f"per hour {pool['per_hour'] / old['per_hour']:.2f}x.",
        ]
        if before.endswith("subprocess)"):  # the target is against the runner of before issue 13
            lines.append(f"- Issue 13's CPU target, the quickstart search in <= 60% of the wall time before it, same "
                         f"trials and fidelities: {'met' if ratio <= 0.6 else 'not met'} ({ratio:.0%}).")
    if split is not None:
        lines += render_breakdown(split)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--runners", **list_flag(str, ["subprocess", "pool"]), default=["subprocess", "pool"])
    parser.add_argument("--rounds", type=int, default=1, help="searches per runner, alternating")
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "quickstart" / "data")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recsearch_bench_overhead"))
    parser.add_argument("--out-md", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--section", default=SECTION)
    parser.add_argument("--note", action="append", default=[], help="an operator's note for the section")
    parser.add_argument("--breakdown-runs", type=int, default=3,
                        help="back-to-back runs of one pool trial for the overhead breakdown (0: none)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: trials train on the GPU (topology.compute_device and base.device cuda)")
    parser.add_argument("--concurrency", action="append", default=[], metavar="RUNNER=N",
                        help="trials at a time for one runner (default: the config's 2), e.g. pool=4")
    parser.add_argument("--baseline-src", type=Path,
                        help="a checkout of an earlier commit (git worktree add DIR COMMIT): its subprocess-runner "
                             "search runs in every round too, as 'before' (overrides are not passed to it)")
    parser.add_argument("--baseline-runner", choices=["subprocess", "pool"], default="subprocess",
                        help="the runner of the --baseline-src searches (default subprocess: issue 13's 'before'; "
                             "pool: one change to the pool runner's search against the commit before it)")
    parser.add_argument("--baseline-overrides", action="store_true",
                        help="pass the overrides to the --baseline-src searches too (the keys must exist there)")
    parser.add_argument("overrides", nargs="*", help="search key=value for every search, e.g. runner.poll_s=0.1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.data if (args.data / "meta.json").exists() else args.workdir / "data")
    load_before = os.getloadavg()[0]
    runs: list[SearchRun] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    concurrency = dict(item.split("=", 1) for item in args.concurrency)
    device = ["topology.compute_device=cuda", "base.device=cuda"] if args.device == "cuda" else []
    runners = [*args.runners, *(["before"] if args.baseline_src else [])]
    for round_ in range(args.rounds):
        order = runners if round_ % 2 == 0 else list(reversed(runners))
        for runner in order:
            out = args.workdir / f"{stamp}-{runner}-{round_}"
            if runner == "before":
                commit = subprocess.run(["git", "-C", str(args.baseline_src), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, check=False).stdout.strip()
                runs.append(run_search(args.baseline_runner, args.trials, data, out, round_,
                                       [*device, *(args.overrides if args.baseline_overrides else [])],
                                       src=args.baseline_src.resolve(), label=f"before ({commit}, {args.baseline_runner})"))
                continue
            mine = [f"runner.concurrency={concurrency[runner]}"] if runner in concurrency else []
            runs.append(run_search(runner, args.trials, data, out, round_, [*device, *args.overrides, *mine]))
    load_after = os.getloadavg()[0]
    split = None
    pool_runs = [r for r in runs if r.runner == "pool"]
    if args.breakdown_runs and pool_runs:
        split = breakdown(args.workdir / f"{stamp}-pool-{pool_runs[0].round}", args.breakdown_runs)
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    command = "python tools/bench_trial_overhead.py " + shlex.join(shown) if shown else "python tools/bench_trial_overhead.py"
    cpu = platform.processor() or platform.machine()
    gpu = "no GPU"
    if args.device == "cuda":
        import torch

        gpu = f"trials on one {torch.cuda.get_device_name(0)}"
    at_once = ", ".join(f"{r} {n} at a time" for r, n in concurrency.items()) or "two trials at a time"
    setup = (f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {os.cpu_count()} cores ({gpu}), load average "
             f"{load_before:.1f} before and {load_after:.1f} after; `configs/search/quickstart.yaml` with "
             f"trials={args.trials} ({at_once}, one thread each, rungs of 100k and 300k rows, the "
             f"reference first), the quickstart data; each search a fresh `recsearch search` process, "
             f"runners alternating per round." + "".join(f" {n}" for n in args.note))
    body = render(runs, command, setup, split, args.device)
    benchmd.write_section(args.out_md, args.section, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
