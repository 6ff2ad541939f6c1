"""Does a search rank candidates by latency the same way every time? Five fixed configurations,
trained and timed as search trials are (each a `recsearch train` process, two at a time), in
repeated rounds, measured two ways side by side:

- `raw`: each trial times its own model while the other trial may be training (what a search did
  before issue 13): candidates ranked by p50.
- `locked`: the trials share a device lock (training shared, latency timing exclusive) and time
  the reference architecture (configuration A) in the same rounds: candidates ranked by p50 over
  the reference's p50, what the search now compares with its budget.

    python tools/bench_latency_rank.py [--repeats 5] [--rows 60000] [--section bench_latency_rank]

Each round runs the five in a different order (so each meets different neighbours); the report
gives every round's ranking, whether all rounds agree, and each configuration's spread across
rounds (max / min of its p50, or of its ratio). Written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_latency_rank.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch import benchmd  # noqa: E402
from recsearch.train.result import TrainResult  # noqa: E402
from recsearch.types import RESULT_FILE  # noqa: E402
from tools.bench_data import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVING_BATCH = 256


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: tuple[str, ...]


CANDIDATES = (
    Candidate("A: dim 16, 64 / 64, dot", ("arch.embedding_dim=16", "arch.bottom_mlp=[64,16]", "arch.top_mlp=[64,1]")),
    Candidate("B: dim 16, 128 / 128, dot", ("arch.embedding_dim=16", "arch.bottom_mlp=[128,16]", "arch.top_mlp=[128,1]")),
    Candidate("C: dim 16, 256-128 / 256-128, dot", ("arch.embedding_dim=16", "arch.bottom_mlp=[256,128,16]", "arch.top_mlp=[256,128,1]")),
    Candidate("D: dim 32, 256 / 512-256, dot", ("arch.embedding_dim=32", "arch.bottom_mlp=[256,32]", "arch.top_mlp=[512,256,1]")),
    Candidate("E: dim 16, 128 / 128, dcn 2x64", ("arch.embedding_dim=16", "arch.bottom_mlp=[128,16]", "arch.top_mlp=[128,1]",
                                                 "arch.interaction=dcn", "arch.dcn_num_layers=2", "arch.dcn_low_rank_dim=64")),
)
REFERENCE = CANDIDATES[0]


def _command(data: Path, out: Path, candidate: Candidate, mode: str, lock: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "recsearch.cli", "train", "--config", str(REPO / "configs" / "train" / "quickstart.yaml"),
        f"data_dir={data}", f"output_dir={out}", "max_steps=30", "tensorboard=false", "eval_rows=2048",
        "overwrite_output=true",  # every repetition times a fresh run in the same scratch folder
        f"latency_batch_sizes=[{SERVING_BATCH}]", *candidate.overrides,
    ]
    if mode == "locked":
        ref = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in REFERENCE.overrides}
        cmd += [f"device_lock={lock}"] + [f"latency_reference.{k}={v}" for k, v in ref.items()]
    return cmd


def run_round(data: Path, scratch: Path, mode: str, order: list[Candidate], concurrency: int) -> dict[str, dict]:
    """Train and time the candidates, `concurrency` processes at a time, as a search's trials."""
    lock = scratch / f"device_{mode}.lock"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the search's subprocess runner (runner.threads 1)
    pending, running, results = list(order), [], {}
    while pending or running:
        while pending and len(running) < concurrency:
            cand = pending.pop(0)
            out = scratch / f"{mode}_{cand.name[0]}_{time.time_ns()}"
            proc = subprocess.Popen(_command(data, out, cand, mode, lock), cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            running.append((cand, out, proc))
        cand, out, proc = running.pop(0)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{cand.name} ({mode}) failed: {err[-1500:]}")
        entry = TrainResult.read(out / RESULT_FILE).latency(SERVING_BATCH)
        if entry is None:
            raise RuntimeError(f"{cand.name} ({mode}): no latency at batch {SERVING_BATCH} in {out / RESULT_FILE}")
        results[cand.name] = dataclasses.asdict(entry)
    return results


def key(entry: dict, mode: str) -> float:
    """What the search ranks by: locked, the ratio to the reference timed in the same rounds
    (paired round by round where the trainer recorded it); raw, the p50 itself."""
    if mode == "raw":
        return entry["p50_ms"]
    return entry.get("vs_reference") or entry["p50_ms"] / entry["reference_p50_ms"]


def ranking(results: dict[str, dict], mode: str) -> list[str]:
    return sorted(results, key=lambda n: key(results[n], mode))


def contradictions(rounds: list[dict[str, dict]], mode: str, resolution: float) -> list[str]:
    """Pairs that two rounds order oppositely, each time by more than `resolution` (relative):
    a swap between configurations closer than the measurement's resolution is a tie, not a
    contradiction."""
    out = []
    names = list(rounds[0])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            signs = set()
            for res in rounds:
                ka, kb = key(res[a], mode), key(res[b], mode)
                if abs(ka - kb) / min(ka, kb) > resolution:
                    signs.add(ka < kb)
            if len(signs) == 2:
                out.append(f"{a[0]}/{b[0]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=60_000, help="synthetic rows (quickstart tables)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the rounds' candidate orders")
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--section", default="bench_latency_rank")
    p.add_argument("--resolution", type=float, default=0.03, help="pairs closer than this (relative) are ties")
    args = p.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_latency_rank_") as tmp:
        scratch = Path(tmp)
        data = scratch / "data"
        subprocess.run([sys.executable, "-m", "recsearch.cli", "data", "synth", "--config",
                        str(REPO / "configs" / "data" / "quickstart.yaml"), "--out", str(data),
                        "rows_per_day=null", f"total_rows={args.rows}", "--no-progress"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        rng = random.Random(args.seed)
        rounds: dict[str, list[dict[str, dict]]] = {"raw": [], "locked": []}
        for r in range(args.repeats):
            order = list(CANDIDATES)
            rng.shuffle(order)
            for mode in (("raw", "locked") if r % 2 == 0 else ("locked", "raw")):
                rounds[mode].append(run_round(data, scratch, mode, order, args.concurrency))
                print(f"round {r + 1} {mode}: done", file=sys.stderr)
    body = render(args, rounds, time.time() - started)
    benchmd.write_section(args.out_md, args.section, body)
    print(body)
    return 0


def render(args: argparse.Namespace, rounds: dict[str, list[dict[str, dict]]], wall_s: float) -> str:
    names = [c.name for c in CANDIDATES]
    lines = [
        f"## Latency ranking of five fixed configurations across repeated rounds ({args.section})",
        "",
        f"Measured {date.today().isoformat()} on {machine()}, {args.repeats} rounds, {args.concurrency} trainings at a time "
        f"(OMP_NUM_THREADS=1 each, as the search's subprocess runner), {wall_s / 60:.1f} min:",
        "",
        f"    python tools/bench_latency_rank.py --repeats {args.repeats} --rows {args.rows} --section {args.section}"
        + (f" --resolution {args.resolution:g}" if args.resolution != 0.03 else ""),
        "",
        "Each configuration is one `recsearch train` run (30 steps on the quickstart tables, p50 at batch "
        f"{SERVING_BATCH}, eager forward). `raw`: ranked by its own p50, timed while the other training may run. "
        "`locked`: the runs share a device lock and time configuration A's architecture in the same rounds; "
        "ranked by the ratio to it, paired round by round (what the search compares with a reference budget).",
        "",
        f"`agree beyond {args.resolution:.0%}`: no two rounds order a pair oppositely when both times the pair is more than "
        f"{args.resolution:.0%} apart (closer pairs are ties at the measurement's resolution, the 3 % spread target).",
        "",
        f"| mode | rankings, fastest first (one per round) | all rounds agree | agree beyond {args.resolution:.0%} |",
        "|---|---|---|---|",
    ]
    for mode, per_round in rounds.items():
        orders = [" < ".join(n[0] for n in ranking(res, mode)) for res in per_round]
        swaps = contradictions(per_round, mode, args.resolution)
        beyond = "yes" if not swaps else f"**no** ({', '.join(swaps)})"
        lines.append(f"| {mode} | {'; '.join(orders)} | {'yes' if len(set(orders)) == 1 else '**no**'} | {beyond} |")
    lines += ["", "| configuration | raw p50 ms, median (max / min over rounds) | locked: vs reference, median (max / min) "
              "| locked: spread of the ratio within a run, median |",
              "|---|---:|---:|---:|"]
    for n in names:
        raw = [res[n]["p50_ms"] for res in rounds["raw"]]
        ratio = [key(res[n], "locked") for res in rounds["locked"]]
        spread = [res[n].get("vs_reference_spread", res[n]["spread"]) for res in rounds["locked"]]
        lines.append(f"| {n} | {statistics.median(raw):.3f} ({max(raw) / min(raw):.3f}) | "
                     f"{statistics.median(ratio):.3f} ({max(ratio) / min(ratio):.3f}) | {statistics.median(spread):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
