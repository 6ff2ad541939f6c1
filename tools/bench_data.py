"""Data-path benchmark: preprocessing and loading, recsearch vs the original DLRM code vs TorchRec.

    python tools/bench_data.py --dlrm-repo /path/to/facebookresearch/dlrm \
        [--dlrm-python /path/to/python-with-numpy<2] [--rows 1000000] [--original-rows 200000]

All methods run in one invocation on the same generated Kaggle-format file. Each preprocessing run
is a fresh subprocess: wall time, CPU time (user + system, workers included: barely moved by other
load on a shared machine) and peak RSS of its largest process; the original runs between the
1-worker and the all-workers recsearch runs. The original's preprocessing is per-line Python, so
it may be measured on the first --original-rows rows of the same file; its rate is rows/s either
way. facebookresearch/dlrm needs numpy < 2 (its int32 id parsing relies on wraparound), hence
--dlrm-python: a separate environment with numpy<2 and torch. Without a usable checkout or
interpreter the original is skipped and the section says why. Loader throughput is measured in
this process, methods interleaved over --repeats rounds, medians reported. Results replace the
section between the bench_data markers of --out-md (other sections are kept).

Quick mode (tests): --rows 5000 --batch-sizes 256 --batches 3 --repeats 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python tools/bench_data.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch import benchmd  # noqa: E402
from recsearch.cliargs import list_flag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "criteo_kaggle_sample100_paddlerec.tsv"
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
SECTION = "bench_data"
SECTION_START, SECTION_END = benchmd.markers(SECTION)
ORIGINAL = "facebookresearch/dlrm"
ORIGINAL_NPZ = "kaggleAdDisplayChallenge_processed.npz"  # its processed-data file name
RECSEARCH_LOADER = "recsearch NpyBatchLoader"
TORCHREC_LOADER = "TorchRec InMemoryBinaryCriteoIterDataPipe"
IN_MEMORY, MMAP = "in memory", "mmap"
PREPROCESS_TARGET, LOADER_VS_ORIGINAL_TARGET = 10.0, 20.0  # issue 2


@dataclass(frozen=True)
class PreprocessRun:
    method: str
    rows: int
    seconds: float
    cpu_seconds: float  # user + system, all processes: barely moved by other load on the machine
    peak_rss_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.cpu_seconds


@dataclass(frozen=True)
class LoaderRun:
    method: str
    batch_size: int
    ms_per_batch: float
    cpu_ms_per_batch: float  # user + system of the process, all its threads
    storage: str  # "in memory" or "mmap": the TorchRec mode it is compared with

    @property
    def rows_per_s(self) -> float:
        return self.batch_size / (self.ms_per_batch / 1000)

    @property
    def rows_per_cpu_s(self) -> float:
        return self.batch_size / (self.cpu_ms_per_batch / 1000)


def make_kaggle_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """Kaggle-format rows: real rows from the shared sample, categorical ids redrawn per field from
    a heavy-tailed distribution over Kaggle's cardinalities (empty fields stay empty)."""
    source = [line.split("\t") for line in SAMPLE.read_text().split("\n") if line]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(source), rows)
    ids = np.stack(
        [
            np.minimum(rng.pareto(1.0, rows).astype(np.int64), c - 1) * 2654435761 % (1 << 32)
            for c in KAGGLE_CARDINALITIES
        ],
        axis=1,
    )
    with open(path, "w") as fh:
        for start in range(0, rows, 100_000):
            lines = []
            for i in range(start, min(rows, start + 100_000)):
                row = source[pick[i]]
                cats = ["" if row[14 + t] == "" else format(ids[i, t], "08x") for t in range(26)]
                lines.append("\t".join(row[:14] + cats))
            fh.write("\n".join(lines) + "\n")


_CHILD_PRELUDE = textwrap.dedent(
    """
    import resource as _r
    def _cpu():  # user + system seconds of this process and its finished children
        return sum(u.ru_utime + u.ru_stime for u in (_r.getrusage(_r.RUSAGE_SELF),
                                                     _r.getrusage(_r.RUSAGE_CHILDREN)))
    """
)


def _run_child(python: str, code: str, cwd: Path) -> dict:
    """Run code (which may call `_cpu()`) in a fresh interpreter; it prints one JSON line last.
    Adds the peak RSS (MB) of the largest process of its tree."""
    wrapper = (
        _CHILD_PRELUDE
        + code
        + textwrap.dedent(
            """
        import resource as _r
        _self = _r.getrusage(_r.RUSAGE_SELF).ru_maxrss
        _kids = _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss
        print("PEAK_RSS_KB", max(_self, _kids))
        """
        )
    )
    proc = subprocess.run(
        [python, "-c", wrapper], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    result["peak_rss_mb"] = int(lines[-1].split()[1]) / 1024
    return result


def bench_recsearch_preprocess(
    tsv: Path, out: Path, workers: int, rows: int, src: Path = REPO, label: str = "recsearch"
) -> PreprocessRun:
    """recsearch's preprocess in a fresh interpreter, importing recsearch from `src` (this
    checkout, or --baseline-src: an earlier commit's, for a side-by-side of two versions)."""
    code = textwrap.dedent(
        f"""
        import json, time
        from recsearch.data.criteo import PreprocessOptions, preprocess
        t, c = time.perf_counter(), _cpu()
        preprocess([{str(tsv)!r}], {str(out)!r}, PreprocessOptions(workers={workers}, force=True))
        print(json.dumps({{"seconds": time.perf_counter() - t, "cpu": _cpu() - c}}))
        """
    )
    result = _run_child(sys.executable, code, src)
    return PreprocessRun(
        f"{label}, {workers} worker{'s' if workers > 1 else ''}",
        rows,
        result["seconds"],
        result["cpu"],
        result["peak_rss_mb"],
    )


def bench_original_preprocess(python: str, dlrm_repo: Path, tsv: Path, rows: int) -> PreprocessRun:
    for stale in tsv.parent.iterdir():  # its day splits, counts, dictionaries, processed data
        if stale != tsv:
            stale.unlink()
    code = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(dlrm_repo)!r})
        import dlrm_data_pytorch as dp
        t, c = time.perf_counter(), _cpu()
        dp.CriteoDataset("kaggle", -1, 0.0, "total", "train", raw_path={str(tsv)!r},
                         pro_data={str(tsv.parent / ORIGINAL_NPZ)!r})
        print(json.dumps({{"seconds": time.perf_counter() - t, "cpu": _cpu() - c}}))
        """
    )
    result = _run_child(python, code, tsv.parent)
    return PreprocessRun(
        f"{ORIGINAL} (data_utils, 1 process)",
        rows,
        result["seconds"],
        result["cpu"],
        result["peak_rss_mb"],
    )


def _time_batches(make_iter, batches: int) -> tuple[float, float]:
    """(wall, CPU) ms per batch over `batches` batches after one warm-up batch. CPU time is the
    whole process's, so a prefetch thread's work counts."""
    threads = threading.active_count()
    it = iter(make_iter())
    next(it)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if hasattr(it, "close"):
        it.close()
    del it
    deadline = time.monotonic() + 2.0  # let a prefetch thread exit before the next method runs
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.01)
    return wall / batches * 1000, cpu / batches * 1000


def _loader_factories(npy_dir: Path, batch_size: int) -> dict[str, tuple[str, object]]:
    """name -> (storage, zero-argument factory of a fresh loader) for every method compared."""
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    from recsearch.data import layout
    from recsearch.data.loader import NpyBatchLoader

    meta = layout.read_meta(npy_dir)
    paths = [
        [str(layout.day_file(npy_dir, d, k)) for d in range(meta.num_days - 1)]  # train days
        for k in ("dense", "sparse", "labels")
    ]
    hashes = [min(c, 10_000_000) for c in meta.num_embeddings_per_feature]

    def ours(in_memory: bool, prefetch: int = 2):
        return lambda: NpyBatchLoader(
            npy_dir, "train", batch_size, num_embeddings_per_feature=hashes,
            in_memory=in_memory, prefetch_batches=prefetch,
        )  # fmt: skip

    def torchrec(mmap: bool):
        return lambda: InMemoryBinaryCriteoIterDataPipe(
            "train", *paths, batch_size=batch_size, rank=0, world_size=1, mmap_mode=mmap,
            hashes=hashes,
        )  # fmt: skip

    return {
        f"{RECSEARCH_LOADER} (in memory, prefetch 2)": (IN_MEMORY, ours(True)),
        f"{RECSEARCH_LOADER} (in memory, no prefetch)": (IN_MEMORY, ours(True, prefetch=0)),
        f"{RECSEARCH_LOADER} (memmap, prefetch 2)": (MMAP, ours(False)),
        f"{TORCHREC_LOADER} (mmap)": (MMAP, torchrec(True)),
        f"{TORCHREC_LOADER} (in memory)": (IN_MEMORY, torchrec(False)),
    }


def _fitting(batch_sizes: list[int], train_rows: int, what: str) -> list[int]:
    """The batch sizes that leave a warm-up batch and at least one timed batch."""
    too_big = [b for b in batch_sizes if train_rows // b < 2]
    if too_big:
        print(
            f"{what}: {train_rows:,} training rows, skipping batch sizes {too_big}", file=sys.stderr
        )
    return [b for b in batch_sizes if b not in too_big]


def bench_loaders(
    npy_dir: Path, batch_sizes: list[int], batches: int, repeats: int
) -> list[LoaderRun]:
    from recsearch.data import layout

    train_rows = sum(layout.read_meta(npy_dir).day_rows[:-1])
    runs: list[LoaderRun] = []
    for batch_size in _fitting(batch_sizes, train_rows, "recsearch/TorchRec loaders"):
        n = min(batches, train_rows // batch_size - 1)  # after one warm-up batch
        methods = _loader_factories(npy_dir, batch_size)
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        for _ in range(repeats):  # interleaved rounds: machine noise hits every method alike
            for name, (_, make) in methods.items():
                timings[name].append(_time_batches(make, n))
        for name, (storage, _) in methods.items():
            wall, cpu = zip(*timings[name], strict=True)
            runs.append(
                LoaderRun(
                    name, batch_size, statistics.median(wall), statistics.median(cpu), storage
                )
            )
    return runs


def bench_original_loader(
    python: str, dlrm_repo: Path, tsv: Path, batch_size: int, batches: int
) -> LoaderRun:
    code = textwrap.dedent(
        f"""
        import json, sys, time, torch
        sys.path.insert(0, {str(dlrm_repo)!r})
        import dlrm_data_pytorch as dp
        ds = dp.CriteoDataset("kaggle", -1, 0.0, "total", "train", raw_path={str(tsv)!r},
                              pro_data={str(tsv.parent / ORIGINAL_NPZ)!r})
        dl = torch.utils.data.DataLoader(ds, batch_size={batch_size}, shuffle=False, num_workers=0,
                                         collate_fn=dp.collate_wrapper_criteo_offset)
        it = iter(dl); next(it)
        t, c = time.perf_counter(), time.process_time()
        for _ in range({batches}):
            next(it)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(json.dumps({{"ms": wall / {batches} * 1000, "cpu_ms": cpu / {batches} * 1000}}))
        """
    )
    result = _run_child(python, code, tsv.parent)
    name = f"{ORIGINAL} CriteoDataset + DataLoader (per sample, 0 workers)"
    return LoaderRun(name, batch_size, result["ms"], result["cpu_ms"], IN_MEMORY)


def original_unavailable(dlrm_repo: Path | None, python: str) -> str | None:
    """Why the original cannot be measured here, or None when it can."""
    if dlrm_repo is None:
        return "no --dlrm-repo given"
    if not (dlrm_repo / "dlrm_data_pytorch.py").is_file():
        return f"{dlrm_repo} is not a checkout of {ORIGINAL} (no dlrm_data_pytorch.py)"
    probe = "import numpy, torch; print(numpy.__version__)"
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"{python} cannot import numpy and torch: {proc.stderr.strip().splitlines()[-1:]}"
    if int(proc.stdout.split(".")[0]) >= 2:
        return (
            f"{python} has numpy {proc.stdout.strip()}; the original's int32 id parsing needs "
            "numpy < 2 (pass --dlrm-python)"
        )
    return None


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _ratio(value: float, base: float | None, digits: int) -> str:
    if base is None:
        return "n/a"
    ratio = value / base
    return f"{ratio:.{digits}f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _original_preprocess(pre: list[PreprocessRun]) -> PreprocessRun | None:
    return next((r for r in pre if r.method.startswith(ORIGINAL)), None)


def _original_loader(loaders: list[LoaderRun], batch_size: int) -> LoaderRun | None:
    found = (r for r in loaders if r.method.startswith(ORIGINAL) and r.batch_size == batch_size)
    return next(found, None)


def _torchrec(loaders: list[LoaderRun], batch_size: int, storage: str) -> LoaderRun | None:
    found = (
        r
        for r in loaders
        if r.method.startswith(TORCHREC_LOADER)
        and r.batch_size == batch_size
        and r.storage == storage
    )
    return next(found, None)


def _preprocess_table(pre: list[PreprocessRun]) -> list[str]:
    original = _original_preprocess(pre)
    lines = [
        "### Preprocessing (Criteo Kaggle TSV -> training arrays)",
        "",
        _row("method", "rows", "seconds", "CPU s", "rows/s", "peak RSS (MB, largest process)",
             "vs original", "vs original, CPU time"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in pre:
        wall = _ratio(r.rows_per_s, original and original.rows_per_s, 1)
        cpu = _ratio(r.rows_per_cpu_s, original and original.rows_per_cpu_s, 1)
        lines.append(
            _row(r.method, f"{r.rows:,}", f"{r.seconds:.2f}", f"{r.cpu_seconds:.2f}",
                 f"{r.rows_per_s:,.0f}", f"{r.peak_rss_mb:,.0f}", wall, cpu)
        )  # fmt: skip
    return lines


def _loader_table(loaders: list[LoaderRun]) -> list[str]:
    lines = [
        "### Loading batches for training",
        "",
        _row("method", "batch", "ms/batch", "CPU ms/batch", "rows/s", "vs TorchRec, same storage",
             "vs original", "vs original, CPU time"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in loaders:
        torchrec = _torchrec(loaders, r.batch_size, r.storage)
        original = _original_loader(loaders, r.batch_size)
        same = _ratio(r.rows_per_s, torchrec and torchrec.rows_per_s, 2)
        wall = _ratio(r.rows_per_s, original and original.rows_per_s, 1)
        cpu = _ratio(r.rows_per_cpu_s, original and original.rows_per_cpu_s, 1)
        lines.append(
            _row(r.method, f"{r.batch_size:,}", f"{r.ms_per_batch:.2f}",
                 f"{r.cpu_ms_per_batch:.2f}", f"{r.rows_per_s:,.0f}", same, wall, cpu)
        )  # fmt: skip
    return lines


def _verdicts(runs: list, base: LoaderRun | PreprocessRun, target: float, prefix: str = "") -> str:
    """'name: 1.23x (met), ...' for each run's throughput relative to base."""
    return ", ".join(
        f"{r.method.removeprefix(prefix)}: {r.rows_per_s / base.rows_per_s:.2f}x "
        f"({'met' if r.rows_per_s / base.rows_per_s >= target else 'NOT met'})"
        for r in runs
    )


def _targets(pre: list[PreprocessRun], loaders: list[LoaderRun]) -> list[str]:
    """One line per target of issue 2, from the numbers above."""
    lines = ["### Targets (issue 2)", ""]
    original = _original_preprocess(pre)
    got = "not measured (original skipped)"
    if original:
        ours = [r for r in pre if r is not original]
        cpu = ", ".join(f"{r.rows_per_cpu_s / original.rows_per_cpu_s:.1f}x" for r in ours)
        got = f"{_verdicts(ours, original, PREPROCESS_TARGET)} (CPU-time ratios: {cpu})"
    lines.append(f"- Preprocessing >= {PREPROCESS_TARGET:g}x the original: {got}.")
    prefix = RECSEARCH_LOADER + " "
    for batch_size in sorted({r.batch_size for r in loaders}):
        ours = [
            r
            for r in loaders
            if r.batch_size == batch_size and r.method.startswith(RECSEARCH_LOADER)
        ]
        vs_torchrec = ", ".join(
            _verdicts([r], t, 1.0, prefix)
            for r in ours
            if (t := _torchrec(loaders, batch_size, r.storage))
        )
        lines.append(f"- Batch {batch_size:,}, loader >= TorchRec's (same storage): {vs_torchrec}.")
        original_loader = _original_loader(loaders, batch_size)
        if original_loader:
            got = _verdicts(ours, original_loader, LOADER_VS_ORIGINAL_TARGET, prefix)
            lines.append(
                f"- Batch {batch_size:,}, loader >= {LOADER_VS_ORIGINAL_TARGET:g}x the per-sample "
                f"original: {got}."
            )
    return lines


HOW_MEASURED = """\
How it was measured: every preprocessing run is a fresh subprocess; peak RSS is the larger of its
own `ru_maxrss` and its `RUSAGE_CHILDREN` one (its largest worker), i.e. the largest single process,
not the sum over workers. The original preprocesses with `CriteoDataset("kaggle", max_ind_range=-1,
sub_sample_rate=0, "total")` (7 days, dictionary-remapped ids), possibly on the first rows of the
same file (see the rows column). Loader times are medians over interleaved rounds, after one
warm-up batch, and include building the torch tensors the trainer consumes (a torchrec `Batch` with
a KeyedJaggedTensor; the original's `(X_int, lS_o, lS_i, T)`); building the loader (reading and
hashing the split, for in-memory modes) is not timed. TorchRec and recsearch hash ids to
min(cardinality, 10M). The original's loader is its own `CriteoDataset` +
`DataLoader(collate_fn=collate_wrapper_criteo_offset)` on its own preprocessed output, in one
process (its default `--num-workers=0`). The consumer does no work, so the prefetch thread's
hand-off is pure overhead here; in training it overlaps batch building with the step. On a shared
machine, re-run when it is quiet before trusting the ratios."""


def render(
    pre: list[PreprocessRun], loaders: list[LoaderRun], command: str, skipped: str | None, load: str
) -> str:
    lines = [
        "## Data path",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (no GPU), all methods in one run "
        f"(load average {load}):",
        "",
        f"    {command}",
        "",
    ]
    if skipped:
        lines += [f"**The original ({ORIGINAL}) was not measured: {skipped}.**", ""]
    lines += _preprocess_table(pre) + [""] + _loader_table(loaders) + [""] + _targets(pre, loaders)
    lines += ["", HOW_MEASURED]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dlrm-repo", type=Path, help=f"checkout of {ORIGINAL} (omit to skip the original)"
    )
    parser.add_argument(
        "--dlrm-python", default=sys.executable, help="python for the original (needs numpy<2)"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-src", type=Path, default=None,
        help="another checkout of recsearch (e.g. a git worktree of an earlier commit): its "
        "preprocessing is run on the same file beside this checkout's",
    )
    parser.add_argument("--section", default=SECTION,
                        help="the BENCHMARKS.md section to write (another name keeps the default one)")
    parser.add_argument("--baseline-rounds", type=int, default=5, help="alternating rounds against --baseline-src")
    parser.add_argument("--original-rows", type=int, default=200_000)
    parser.add_argument("--batch-sizes", **list_flag(int), default=[2048, 16384])
    parser.add_argument(
        "--batches",
        type=int,
        default=200,
        help="timed batches per loader round, at most what the split holds (the original: a third)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved loader rounds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recsearch_bench_data"))
    parser.add_argument("--out-md", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    return parser.parse_args(argv)


def ensure_tsv(workdir: Path, rows: int) -> Path:
    """workdir/train.txt with `rows` generated rows, reused when a previous run made the same."""
    workdir.mkdir(parents=True, exist_ok=True)
    tsv = workdir / "train.txt"
    marker = workdir / f"train.rows-{rows}"
    if not marker.exists():
        for stale in workdir.glob("train.rows-*"):
            stale.unlink()
        print(f"writing {rows:,} Kaggle-format rows to {tsv}", file=sys.stderr)
        make_kaggle_tsv(tsv, rows)
        marker.touch()
    return tsv


def original_input(tsv: Path, workdir: Path, rows: int) -> Path:
    """The first `rows` rows of tsv, alone in a directory: the original writes its intermediate
    .npz files next to its input."""
    original_tsv = workdir / "original" / "train.txt"
    original_tsv.parent.mkdir(exist_ok=True)
    with open(tsv) as src, open(original_tsv, "w") as dst:
        dst.writelines(itertools.islice(src, rows))
    return original_tsv


def bench_original_loaders(args: argparse.Namespace, original_tsv: Path, rows: int) -> list:
    train_rows = rows * 6 // 7  # its "total" split: 6 of 7 days for training
    return [
        bench_original_loader(
            args.dlrm_python, args.dlrm_repo, original_tsv, b,
            max(1, min(args.batches // 3, train_rows // b - 1)),
        )
        for b in _fitting(args.batch_sizes, train_rows, f"{ORIGINAL} loader")
    ]  # fmt: skip


def _versus_baseline(tsv: Path, args: argparse.Namespace) -> list[PreprocessRun]:
    """This checkout's and --baseline-src's preprocessing, one worker, alternating for
    --baseline-rounds rounds: two runs holding the medians (a single run of each moved by 20% on
    this shared machine)."""
    label = f"recsearch at {_commit_of(args.baseline_src)} (--baseline-src)"
    runs: dict[str, list[PreprocessRun]] = {"this": [], "base": []}
    for _ in range(args.baseline_rounds):
        runs["this"].append(bench_recsearch_preprocess(tsv, args.workdir / "npy_ab", 1, args.rows))
        runs["base"].append(bench_recsearch_preprocess(
            tsv, args.workdir / "npy_ab", 1, args.rows, args.baseline_src.resolve(), label))

    def median_run(got: list[PreprocessRun], method: str) -> PreprocessRun:
        return PreprocessRun(method, args.rows, statistics.median(r.seconds for r in got),
                             statistics.median(r.cpu_seconds for r in got), max(r.peak_rss_mb for r in got))

    rounds = f"1 worker, median of {args.baseline_rounds} alternating rounds"
    return [median_run(runs["this"], f"recsearch, {rounds}"), median_run(runs["base"], f"{label}, {rounds}")]


def _commit_of(src: Path) -> str:
    """The short commit a checkout is at (its folder name where git cannot say)."""
    proc = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or src.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tsv = ensure_tsv(args.workdir, args.rows)
    skipped = original_unavailable(args.dlrm_repo, args.dlrm_python)
    if skipped:
        print(f"skipping {ORIGINAL}: {skipped}", file=sys.stderr)
    original_rows = min(args.original_rows, args.rows)
    original_tsv = None if skipped else original_input(tsv, args.workdir, original_rows)
    load_before = os.getloadavg()[0]
    npy = args.workdir / "npy"
    # The original runs between the two recsearch runs, so a change of load shows as a gap
    # between those two rather than skewing the ratios one way.
    pre = [bench_recsearch_preprocess(tsv, args.workdir / "npy1", 1, args.rows)]
    if original_tsv:
        pre.append(
            bench_original_preprocess(args.dlrm_python, args.dlrm_repo, original_tsv, original_rows)
        )
    pre.append(bench_recsearch_preprocess(tsv, npy, os.cpu_count() or 1, args.rows))
    versus = _versus_baseline(tsv, args) if args.baseline_src is not None else []
    pre += versus
    loaders = bench_loaders(npy, args.batch_sizes, args.batches, args.repeats)
    if original_tsv:
        loaders += bench_original_loaders(args, original_tsv, original_rows)
    command = "python tools/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    section = render(pre, loaders, command, skipped, load)
    if versus:  # this checkout against --baseline-src, one worker, alternating rounds
        this, base = versus
        section = section.replace("\n### Loading batches", (
            f"- this checkout vs {base.method}: CPU time {this.cpu_seconds / base.cpu_seconds:.2f}x, "
            f"wall time {this.seconds / base.seconds:.2f}x (1 worker, medians of {args.baseline_rounds} "
            "alternating rounds)\n\n### Loading batches"), 1)
    if args.section != SECTION:
        section = section.replace("## Data path", f"## Data path: {args.section}", 1)
    benchmd.write_section(args.out_md, args.section, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
