"""Training speed, side by side in one run: recsearch's trainer vs facebookresearch/dlrm's
`dlrm_s_pytorch.py` vs a plain PyTorch DLRM (tools/plain_dlrm.py), same model, same data, same
optimizer (SGD, lr 0.1, fp32), each end to end with its own data path.

    python tools/bench_train.py --dlrm-repo /path/to/dlrm --dlrm-python /path/to/python-with-numpy<2 \
        [--rows 300000] [--batch-size 2048] [--steps 20 120] [--repeats 2] [--models kaggle mlperf] \
        [--device cpu|cuda]

Data: Kaggle-format TSV rows (tools/bench_data.make_kaggle_tsv: real rows of the shared Criteo
sample with ids redrawn over Kaggle's cardinalities). recsearch and the plain model read it after
`recsearch data preprocess --vocab-threshold 1`; the original preprocesses it itself
(dictionary-encoded ids, the same table sizes). Preprocessing is not timed here (tools/bench_data.py
measures it).

How a step is timed: each run trains S2 steps in a fresh process and prints a progress line every
S1 steps (each implementation's own log line, flushed: recsearch's `step N/M loss`, the original's
`Finished training it N/M`, the plain model's `step N`). This tool timestamps the lines as they
arrive; ms/step = (time of the line at step S2 - time of the line at step S1) / (S2 - S1). So
start-up, loading data into memory, the first steps (warm-up), evaluation and saving are all
outside the window, and everything a step costs is inside it: batch building (each one's own
loader), host-to-device copy, forward, backward, optimizer, and each one's per-step bookkeeping.
The methods are interleaved round by round and the median over rounds is reported, so a change in
machine load hits them alike. The original's own "ms/it" (which leaves out its data loader) and
recsearch's fraction of step time spent waiting for data are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch import benchmd  # noqa: E402
from recsearch.cliargs import list_flag  # noqa: E402
from recsearch.train.result import TrainResult  # noqa: E402
from recsearch.types import RESULT_FILE  # noqa: E402
from tools.bench_data import ORIGINAL, ORIGINAL_NPZ, ensure_tsv, machine, original_unavailable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECSEARCH = "recsearch train"
RECSEARCH_COMPILED = "recsearch train, compile_dense=true"
RECSEARCH_PIPELINE = "recsearch train, engine=pipeline (DMP)"
PLAIN = "plain PyTorch (nn.EmbeddingBag)"
METHODS = (RECSEARCH, RECSEARCH_PIPELINE, RECSEARCH_COMPILED, ORIGINAL, PLAIN)


@dataclass(frozen=True)
class ModelShape:
    """A DLRM shape the three implementations can all build."""

    name: str
    dim: int
    bottom: tuple[int, ...]  # after the 13 dense inputs; ends in dim
    top: tuple[int, ...]  # ends in 1

    def describe(self) -> str:
        return f"dim {self.dim}, bottom 13-{'-'.join(map(str, self.bottom))}, top {'-'.join(map(str, self.top))}"


MODELS = {
    "kaggle": ModelShape("Criteo Kaggle reference", 16, (512, 256, 64, 16), (512, 256, 1)),
    "mlperf": ModelShape("MLPerf DLRM", 128, (512, 256, 128), (1024, 1024, 512, 256, 1)),
}


@dataclass
class Timing:
    """One method on one model: per-round per-step times and what the runs reported."""

    method: str
    model: str
    step_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # CPU time of the process per step, per round
    reported: dict[str, float] = field(default_factory=dict)  # from the longer run of the last round

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def median_cpu_ms(self) -> float | None:
        return statistics.median(self.cpu_ms) if self.cpu_ms else None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process, all its threads (Linux /proc; None
    elsewhere). On a machine shared with other work, wall time per step grows with the load but
    the CPU time a step needs barely does: it is the fairer comparison there."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields after "pid (comm)" start at field 3 (state); utime and stime are fields 14 and 15
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Progress:
    """What a timed run printed: {step: wall-clock arrival (s)} and {step: the process's CPU
    seconds} of its progress lines, and its whole output."""

    wall_s: dict[int, float]
    cpu_s: dict[int, float]
    output: str


@dataclass(frozen=True)
class RunTiming:
    """One run of one method: ms per step (wall and, where readable, CPU) and what it reported."""

    step_ms: float
    cpu_ms: float | None
    reported: dict[str, float]


def _run_timed(cmd: list[str], cwd: Path, env: dict[str, str], step_line: str) -> Progress:
    """Run cmd and timestamp its progress lines (regex `step_line`, whose first group is the
    step number) as they arrive, reading the process's CPU time at each."""
    pattern = re.compile(step_line)
    wall_s: dict[int, float] = {}
    cpu_s: dict[int, float] = {}
    output: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            output.append(line)
            found = pattern.search(line)
            if found:
                step = int(found.group(1))
                wall_s[step] = now
                cpu = process_cpu_s(proc.pid)
                if cpu is not None:
                    cpu_s[step] = cpu
    text = "".join(output)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... failed (exit {proc.returncode}):\n{text[-3000:]}")
    return Progress(wall_s, cpu_s, text)


def _timing(progress: Progress, steps: tuple[int, int], what: str, reported: dict[str, float]) -> RunTiming:
    return RunTiming(_step_ms(progress.wall_s, steps, what), _cpu_step_ms(progress.cpu_s, steps), reported)


def _cpu_step_ms(cpu_s: dict[int, float], steps: tuple[int, int]) -> float | None:
    short, long = steps
    if short not in cpu_s or long not in cpu_s:
        return None
    return 1000 * (cpu_s[long] - cpu_s[short]) / (long - short)


def _step_ms(arrivals: dict[int, float], steps: tuple[int, int], what: str) -> float:
    short, long = steps
    if short not in arrivals or long not in arrivals:
        raise RuntimeError(f"{what}: no progress line at step {short} and {long} (saw {sorted(arrivals)})")
    return 1000 * (arrivals[long] - arrivals[short]) / (long - short)


class Runner:
    """Builds and runs each method's command for a model and a step count."""

    def __init__(self, args: argparse.Namespace, npy_dir: Path, original_tsv: Path | None, scratch: Path):
        self.args = args
        self.npy_dir = npy_dir
        self.original_tsv = original_tsv
        self.scratch = scratch
        # the same OpenMP wait policy for every method (recsearch's CLI would default to PASSIVE)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": args.omp_wait_policy.upper()}

    def recsearch(self, shape: ModelShape, compile_dense: bool = False, engine: str = "auto") -> RunTiming:
        short, steps = self.args.steps
        out = self.scratch / f"recsearch_{shape.dim}{'_compiled' if compile_dense else ''}_{engine}"
        cmd = [
            sys.executable, "-m", "recsearch.cli", "train",
            "--config", str(REPO / "configs" / "train" / "kaggle_reference.yaml"),
            f"data_dir={self.npy_dir}", f"output_dir={out}", f"max_steps={steps}", "overwrite_output=true",
            f"hparams.batch_size={self.args.batch_size}", "max_rows_per_table=null",
            f"arch.embedding_dim={shape.dim}", f"arch.bottom_mlp={list(shape.bottom)}",
            f"arch.top_mlp={list(shape.top)}", f"device={self.args.device}",
            "eval_every_steps=0", f"eval_rows={self.args.batch_size}", "latency_iters=1",
            "latency_batch_sizes=[1]", "tensorboard=false", f"log_every_steps={short}",
            f"compile_dense={str(compile_dense).lower()}", f"engine={engine}",
        ]  # fmt: skip
        progress = _run_timed(cmd, REPO, self.env, r"\[recsearch train\] step (\d+)/\d+ loss")
        result = TrainResult.read(out / RESULT_FILE)
        if result.status != "completed":
            raise RuntimeError(f"recsearch run ended {result.status}")
        return _timing(progress, self.args.steps, RECSEARCH, {
            "samples_per_s": result.samples_per_s,
            "data_wait_fraction": result.data_wait_fraction,
            "loss": result.last_loss,
        })

    def original(self, shape: ModelShape, steps: tuple[int, int] | None = None) -> RunTiming:
        assert self.original_tsv is not None
        short, long = steps or self.args.steps
        cmd = [
            self.args.dlrm_python, str(self.args.dlrm_repo / "dlrm_s_pytorch.py"),
            f"--arch-sparse-feature-size={shape.dim}",
            f"--arch-mlp-bot=13-{'-'.join(map(str, shape.bottom))}",
            f"--arch-mlp-top={'-'.join(map(str, shape.top))}",
            "--data-generation=dataset", "--data-set=kaggle",
            f"--raw-data-file={self.original_tsv}",
            f"--processed-data-file={self.original_tsv.parent / ORIGINAL_NPZ}",
            "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
            f"--mini-batch-size={self.args.batch_size}", f"--num-batches={long}",
            f"--print-freq={short}", "--print-time", "--test-freq=-1", "--nepochs=1",
        ]  # fmt: skip
        if self.args.device == "cuda":
            cmd.append("--use-gpu")
        progress = _run_timed(cmd, self.args.dlrm_repo, self.env, r"Finished training it (\d+)/")
        stdout = progress.output
        found = re.findall(r"Finished training it \d+/\d+ of epoch \d+, ([\d.]+) ms/it, loss ([\d.]+)", stdout)
        if not found:
            raise RuntimeError(f"no 'Finished training' line in the original's output:\n{stdout[-2000:]}")
        ms, loss = found[-1]
        return _timing(progress, (short, long), ORIGINAL, {
            "own_ms_per_it_without_loader": float(ms), "loss": float(loss),
        })

    def plain(self, shape: ModelShape) -> RunTiming:
        short, steps = self.args.steps
        cmd = [
            sys.executable, str(REPO / "tools" / "plain_dlrm.py"), "--data", str(self.npy_dir),
            "--batch-size", str(self.args.batch_size), "--steps", str(steps), "--dim", str(shape.dim),
            "--bottom", ",".join(map(str, shape.bottom)), "--top", ",".join(map(str, shape.top)),
            "--device", self.args.device, "--log-every", str(short),
        ]  # fmt: skip
        progress = _run_timed(cmd, REPO, self.env, r"^step (\d+) loss")
        reported = json.loads(progress.output.strip().splitlines()[-1])
        return _timing(progress, self.args.steps, PLAIN, {
            "samples_per_s": reported["samples_per_s"], "loss": reported["final_loss"],
        })

    def run(self, method: str, shape: ModelShape) -> RunTiming:
        if method == RECSEARCH_COMPILED:
            return self.recsearch(shape, compile_dense=True)
        if method == RECSEARCH_PIPELINE:
            return self.recsearch(shape, engine="pipeline")
        return {RECSEARCH: self.recsearch, ORIGINAL: self.original, PLAIN: self.plain}[method](shape)


def prepare_data(args: argparse.Namespace, need_original: bool) -> tuple[Path, Path | None]:
    """The TSV, recsearch's npy dataset of it, and (when it runs) the original's processed npz."""
    tsv = ensure_tsv(args.workdir, args.rows)
    npy = args.workdir / "npy_vocab1"
    marker = npy / f"rows-{args.rows}"
    if not marker.exists():
        print(f"preprocessing {tsv} for recsearch", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "recsearch.cli", "data", "preprocess", "--input", str(tsv),
             "--out", str(npy), "--vocab-threshold", "1", "--force", "--no-progress"],
            check=True, cwd=REPO,
        )  # fmt: skip
        marker.touch()
    if not need_original:
        return npy, None
    original_dir = args.workdir / f"original_train_{args.rows}"
    original_tsv = original_dir / "train.txt"
    if not (original_dir / ORIGINAL_NPZ).exists():
        original_dir.mkdir(parents=True, exist_ok=True)
        if not original_tsv.exists():
            original_tsv.symlink_to(tsv.resolve())
        print(f"preprocessing {tsv} with {ORIGINAL} (slow; once)", file=sys.stderr)
        runner = Runner(args, npy, original_tsv, args.workdir)
        runner.original(MODELS["kaggle"], (1, 2))  # a short run writes its processed npz
    return npy, original_tsv


def measure(args: argparse.Namespace, runner: Runner, methods: list[str]) -> list[Timing]:
    timings = {(m, k): Timing(m, k) for k in args.models for m in methods}
    for round_ in range(args.repeats):
        for key in args.models:
            shape = MODELS[key]
            order = methods if round_ % 2 == 0 else methods[::-1]
            for method in order:
                run = runner.run(method, shape)
                t = timings[(method, key)]
                t.step_ms.append(run.step_ms)
                if run.cpu_ms is not None:
                    t.cpu_ms.append(run.cpu_ms)
                t.reported = run.reported
                cpu_note = f" ({run.cpu_ms:.2f} CPU ms/step)" if run.cpu_ms is not None else ""
                print(f"round {round_ + 1}: {shape.name:<24} {method:<32} {run.step_ms:8.2f} ms/step{cpu_note}", file=sys.stderr)
    return list(timings.values())


def render(args: argparse.Namespace, timings: list[Timing], command: str, skipped: str | None, load: str) -> str:
    device = "GPU" if args.device == "cuda" else "CPU"
    lines = [
        f"## Trainer, side by side ({device})" + (f": {args.section}" if args.section else ""),
        "",
        f"Measured {date.today().isoformat()} on {machine_name(args.device)}, all methods interleaved "
        f"in one run (load average {load}), OMP_WAIT_POLICY={args.omp_wait_policy.upper()} for every method:",
        "",
        f"    {command}",
        "",
    ]
    if skipped:
        lines += [f"**{ORIGINAL} was not measured: {skipped}.**", ""]
    lines += [
        f"Batch {args.batch_size:,}, fp32, SGD lr 0.1 on embeddings and MLPs, dot interaction, 26 tables "
        f"(ids dictionary-encoded from {args.rows:,} Kaggle-format rows). ms/step: time from each run's "
        f"progress line at step {args.steps[0]} to its line at step {args.steps[1]}, divided by "
        f"{args.steps[1] - args.steps[0]} (see the tool's docstring); median of {args.repeats} "
        f"interleaved rounds. CPU ms/step: the process's user + system CPU time over the same "
        f"window (all its threads), the fairer measure when other work shares the machine; 'vs' "
        f"ratios are on wall time, with the CPU-time ratio in brackets.",
        "",
        "| model | method | ms/step (end to end) | samples/s | CPU ms/step | vs original | vs plain PyTorch | reported by the run |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    by = {(t.method, t.model): t for t in timings}
    for key in args.models:
        for method in METHODS:
            t = by.get((method, key))
            if t is None:
                continue
            orig, plain = by.get((ORIGINAL, key)), by.get((PLAIN, key))
            cpu = f"{t.median_cpu_ms:.2f}" if t.median_cpu_ms is not None else "n/a"
            lines.append(
                f"| {MODELS[key].name} ({MODELS[key].describe()}) | {method} | {t.median_ms:.2f} | "
                f"{args.batch_size / t.median_ms * 1000:,.0f} | {cpu} | {_ratio(orig, t)} | {_ratio(plain, t)} | {_reported(t)} |"
            )
    lines += ["", *verdicts(args, by)]
    return "\n".join(lines)


def _ratio(base: Timing | None, t: Timing) -> str:
    """base's time over t's: wall, then CPU time in brackets when both have it."""
    if base is None:
        return "n/a"
    text = f"{base.median_ms / t.median_ms:.2f}x"
    if base.median_cpu_ms and t.median_cpu_ms:
        text += f" ({base.median_cpu_ms / t.median_cpu_ms:.2f}x CPU)"
    return text


def _reported(t: Timing) -> str:
    parts = []
    r = t.reported
    if "data_wait_fraction" in r:
        parts.append(f"{100 * r['data_wait_fraction']:.1f}% of step time waiting for data")
    if "own_ms_per_it_without_loader" in r:
        parts.append(f"its own timer: {r['own_ms_per_it_without_loader']:.2f} ms/it without its loader")
    if "loss" in r:
        parts.append(f"train loss {r['loss']:.4f}")
    return "; ".join(parts)


def verdicts(args: argparse.Namespace, by: dict[tuple[str, str], Timing]) -> list[str]:
    lines = ["Targets (issue 3):", ""]
    for key in args.models:
        ours = by.get((RECSEARCH, key))
        if ours is None:
            continue
        name = MODELS[key].name
        plain, orig = by.get((PLAIN, key)), by.get((ORIGINAL, key))
        if plain:
            ratio = plain.median_ms / ours.median_ms
            lines.append(f"- {name}: recsearch vs plain PyTorch {ratio:.3f}x wall time ({'met' if ratio >= 1 else 'NOT met'}: not slower)")
            if plain.median_cpu_ms and ours.median_cpu_ms:
                cpu_ratio = plain.median_cpu_ms / ours.median_cpu_ms
                lines.append(f"  - in CPU time per step: {cpu_ratio:.3f}x ({'met' if cpu_ratio >= 1 else 'NOT met'}: not slower)")
        pipeline = by.get((RECSEARCH_PIPELINE, key))
        if pipeline:
            ratio = pipeline.median_ms / ours.median_ms
            lines.append(f"- {name}: single engine (the default on one device) vs engine=pipeline {ratio:.3f}x wall time "
                         f"({'met' if ratio >= 1 else 'NOT met'}: not slower, issue 12)")
            if pipeline.median_cpu_ms and ours.median_cpu_ms:
                cpu_ratio = pipeline.median_cpu_ms / ours.median_cpu_ms
                lines.append(f"  - in CPU time per step: {cpu_ratio:.3f}x ({'met' if cpu_ratio >= 1 else 'NOT met'}: not slower)")
        compiled = by.get((RECSEARCH_COMPILED, key))
        if compiled:
            lines.append(f"- {name}: compile_dense=true vs eager recsearch {_ratio(ours, compiled)} (an option, no target)")
        if orig:
            ratio = orig.median_ms / ours.median_ms
            target = 4.38
            if args.device == "cuda":
                verdict = f"{'met' if ratio >= target else 'NOT met'}: >= {target}x on GPU"
            else:
                verdict = f"for reference: the >= {target}x target is set for GPU"
            lines.append(f"- {name}: recsearch vs {ORIGINAL} {ratio:.2f}x ({verdict})")
    if args.device == "cpu":
        lines += [
            "",
            "GPU targets (>= 4.38x the original end to end, >= 2x TorchRec's default path on the MLPerf",
            "model, faster than plain PyTorch on the Kaggle model): not measured by this run (CPU only);",
            "see the GPU section for what has been measured on a GPU and when.",
        ]
    return lines


def machine_name(device: str) -> str:
    if device == "cuda":
        import torch

        return f"one {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{machine()} (no GPU)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dlrm-repo", type=Path, help=f"checkout of {ORIGINAL} (omit to skip it)")
    p.add_argument("--dlrm-python", default=sys.executable, help="python for the original (needs numpy<2)")
    p.add_argument("--rows", type=int, default=300_000, help="Kaggle-format rows generated (6/7 train)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, nargs=2, default=[20, 120], metavar=("S1", "S2"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--models", **list_flag(str, sorted(MODELS)), default=["kaggle", "mlperf"])
    p.add_argument("--methods", **list_flag(str, ["recsearch", "recsearch-pipeline", "recsearch-compiled", "original", "plain"]),
                   default=["recsearch", "original", "plain"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--omp-wait-policy", choices=["passive", "active"], default="passive",
                   help="OpenMP wait policy of every method (passive: recsearch's default); active "
                        "writes its own section, for the comparison")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsearch_bench_train")
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--section", help="BENCHMARKS.md section to (re)write (default bench_train_<device>, "
                                     "with _omp_active for --omp-wait-policy active)")
    args = p.parse_args(argv)
    short, long = args.steps
    if not 0 < short < long or long % short:
        p.error("--steps S1 S2 needs 0 < S1 < S2 with S2 a multiple of S1 (progress lines every S1 steps)")
    train_rows = args.rows * 6 // 7
    if long * args.batch_size > train_rows:
        p.error(f"{long} steps x batch {args.batch_size} > {train_rows:,} train rows; raise --rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = {"recsearch": RECSEARCH, "recsearch-pipeline": RECSEARCH_PIPELINE, "recsearch-compiled": RECSEARCH_COMPILED,
              "original": ORIGINAL, "plain": PLAIN}
    methods = [wanted[m] for m in args.methods]
    skipped = original_unavailable(args.dlrm_repo, args.dlrm_python) if ORIGINAL in methods else None
    if skipped:
        print(f"skipping {ORIGINAL}: {skipped}", file=sys.stderr)
        methods.remove(ORIGINAL)
    npy, original_tsv = prepare_data(args, need_original=ORIGINAL in methods)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        timings = measure(args, Runner(args, npy, original_tsv, Path(scratch)), methods)
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    command = "python tools/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(args, timings, command, skipped, load)
    name = args.section or (
        f"bench_train_{args.device}" + ("" if args.omp_wait_policy == "passive" else f"_omp_{args.omp_wait_policy}")
    )
    benchmd.write_section(args.out_md, name, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
