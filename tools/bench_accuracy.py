"""Accuracy benchmark: how close does the trainer get to the Bayes ceiling, how far does it beat a
logistic-regression baseline on the same split, and what does each precision option cost in AUC?

    python tools/bench_accuracy.py [--data runs/ceiling/data] [--precisions fp32/fp32 fp16/fp32]
                                   [--logreg-epochs 1] [--out-md docs/BENCHMARKS.md]

Setup: `recsearch data synth --config configs/data/ceiling.yaml` (2M rows over 4 days, planted
pairwise interactions, a known Bayes-optimal AUC; generated once into --data), then on the same
train/val/test split:
- `recsearch baseline logreg` (one weight per id and per dense feature: cannot model interactions);
- `recsearch train --config configs/train/ceiling.yaml` once per precision pair
  EMBEDDING/DENSE (embedding_precision fp32|fp16, dense_precision fp32|bf16).
Every run is a subprocess with its own result.json; the table quotes val/test AUC, log loss, the
gap to the ceiling and the wall time (with the load average, since this machine may be shared).
bf16 autocast on a CPU without bf16 hardware is emulated and very slow: include fp32/bf16 only
on a GPU or a CPU with AMX/AVX512-BF16. Rewrites the `bench_accuracy` section of --out-md.

Quick mode (tests): --config-data DATA.yaml --config-train TRAIN.yaml with tiny configs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch import benchmd  # noqa: E402
from recsearch.cliargs import list_flag  # noqa: E402
from recsearch.train.result import TrainResult  # noqa: E402
from recsearch.types import RESULT_FILE  # noqa: E402
from tools.bench_data import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "bench_accuracy"


@dataclass(frozen=True)
class RunOutcome:
    """One training run's numbers, read from its result.json."""

    name: str
    val_auc: float
    test_auc: float
    val_log_loss: float
    wall_s: float
    samples_per_s: float | None
    load_before: float
    load_after: float


def _load() -> float:
    return os.getloadavg()[0]


def _run(cmd: list[str], out_dir: Path, name: str) -> RunOutcome:
    """Run one command (an argument list), then read the result.json it wrote in out_dir."""
    load_before = _load()
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    result = TrainResult.read(out_dir / RESULT_FILE)
    metrics = result.metrics
    return RunOutcome(
        name=name, val_auc=metrics["val"].auc, test_auc=metrics["test"].auc,
        val_log_loss=metrics["val"].log_loss, wall_s=wall_s, samples_per_s=result.samples_per_s,
        load_before=load_before, load_after=_load(),
    )  # fmt: skip


def ensure_data(data_dir: Path, data_config: Path) -> dict:
    """The ceiling dataset (generated once) and its meta.json."""
    if not (data_dir / "meta.json").exists():
        cmd = [sys.executable, "-m", "recsearch.cli", "data", "synth", "--config", str(data_config),
               "--out", str(data_dir), "--force"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return json.loads((data_dir / "meta.json").read_text())


def run_all(args: argparse.Namespace) -> tuple[dict, list[RunOutcome]]:
    meta = ensure_data(args.data, args.config_data)
    runs = []
    out = args.workdir / "logreg"
    runs.append(_run(
        [sys.executable, "-m", "recsearch.cli", "baseline", "logreg", "--data", str(args.data), "--out", str(out),
         "--epochs", str(args.logreg_epochs)],
        out, f"logistic regression ({args.logreg_epochs} epoch{'s' if args.logreg_epochs > 1 else ''})",
    ))  # fmt: skip
    for pair in args.precisions:
        emb, dense = pair.split("/")
        out = args.workdir / f"dlrm_{emb}_{dense}"
        cmd = [sys.executable, "-m", "recsearch.cli", "train", "--config", str(args.config_train),
               f"data_dir={args.data}", f"output_dir={out}", f"embedding_precision={emb}",
               f"dense_precision={dense}", "tensorboard=false", "overwrite_output=true"]  # fmt: skip (a rerun replaces it)
        runs.append(_run(cmd, out, f"DLRM, embeddings {emb}, dense {dense}"))
    return meta, runs


def _shown(path: Path) -> Path:
    """A path as the section shows it: relative to the repository when inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def render(args: argparse.Namespace, meta: dict, runs: list[RunOutcome]) -> str:
    bayes_val, bayes_test = meta["bayes"]["val"]["auc"], meta["bayes"]["test"]["auc"]
    train_rows = sum(meta["day_rows"][:-1])
    logreg = runs[0]
    lines = [
        "## Accuracy against the Bayes ceiling (synthetic data)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (no GPU); the runs one after another:",
        "",
        "    " + " ".join(["python", "tools/bench_accuracy.py", *args.argv]),
        "",
        f"Data: `{_shown(args.config_data)}`, "
        f"{train_rows:,} training rows, {meta['bayes']['val']['rows']:,} val and {meta['bayes']['test']['rows']:,} "
        f"test rows; Bayes-optimal AUC val {bayes_val:.4f} / test {bayes_test:.4f}. DLRM config: "
        f"`{_shown(args.config_train)}`.",
        "",
        "| model | val AUC | test AUC | gap to ceiling (val) | vs logistic regression (val) | val log loss | wall s | load avg before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.val_auc:.4f} | {r.test_auc:.4f} | {bayes_val - r.val_auc:+.4f} | "
            f"{r.val_auc - logreg.val_auc:+.4f} | {r.val_log_loss:.4f} | {r.wall_s:.0f} | "
            f"{r.load_before:.1f} / {r.load_after:.1f} |"
        )
    lines += ["", "Targets (issue 3):", ""]
    default = next((r for r in runs[1:] if r.name.endswith("embeddings fp32, dense fp32")), None)
    if default:
        gap = bayes_val - default.val_auc
        lines.append(f"- default config within 0.02 AUC of the ceiling: gap {gap:.4f} ({'met' if gap <= 0.02 else 'NOT met'})")
        margin = default.val_auc - logreg.val_auc
        lines.append(f"- clearly beats logistic regression: +{margin:.4f} val AUC ({'met' if margin >= 0.01 else 'NOT met'}: >= 0.01)")
    for r in runs[1:]:
        if default and r is not default:
            lines.append(f"- AUC effect of {r.name.removeprefix('DLRM, ')}: {r.val_auc - default.val_auc:+.4f} val, "
                         f"{r.test_auc - default.test_auc:+.4f} test vs fp32")
    lines += ["", "Wall times include start-up and evaluation and depend on the machine's load (column on the right)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "runs" / "ceiling" / "data")
    p.add_argument("--config-data", type=Path, default=REPO / "configs" / "data" / "ceiling.yaml")
    p.add_argument("--config-train", type=Path, default=REPO / "configs" / "train" / "ceiling.yaml")
    p.add_argument("--precisions", **list_flag(str), default=["fp32/fp32", "fp16/fp32"], metavar="EMB/DENSE")
    p.add_argument("--logreg-epochs", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_accuracy")
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = p.parse_args(argv)
    from recsearch.model.dlrm import DENSE_DTYPES, EMBEDDING_DTYPES

    for pair in args.precisions:
        emb, _, dense = pair.partition("/")
        if emb not in EMBEDDING_DTYPES or dense not in DENSE_DTYPES:
            p.error(f"--precisions {pair!r}: expected EMB/DENSE with EMB {'|'.join(EMBEDDING_DTYPES)} "
                    f"and DENSE {'|'.join(DENSE_DTYPES)}")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.config_data, args.config_train = args.config_data.resolve(), args.config_train.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta, runs = run_all(args)
    body = render(args, meta, runs)
    benchmd.write_section(args.out_md, SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
