"""The trainer on one GPU: issue 12's targets, the engines side by side, and the anchors, in one run.

    python tools/bench_gpu.py run --data DIR --out OUT_DIR --group targets|mlperf|equality|host [--quick]
    python tools/bench_gpu.py anchors --out OUT_DIR --anchor-script .gpu/bench_anchor.py
    python tools/bench_gpu.py report --out OUT_DIR | --results R1.jsonl [R2.jsonl ...] [--md docs/BENCHMARKS.md]

tools/gpu_check.sh runs all of it on a GPU machine (data from configs/data/synthetic_kaggle.yaml).
Each case is one `recsearch train` run, in this process (one import of torch/TorchRec/FBGEMM for
a group), end to end: the data path, the LR schedule, logging and the loss read-back included.
A case's speed is the median over its log windows after the first two (the single engine's
eager warm-up and graph capture fall in those), from result.json's history (samples/s of each
window of log_every_steps steps, wall clock). Every case appends its result to OUT/results.jsonl
as soon as it ends, so a later failure loses nothing.

`equality`: the same config and seed on the graphed single engine, the eager single engine and
the DMP pipeline, 500 steps with a warmup + decay schedule, the loss of every step logged: the
largest relative difference of any step's loss between each pair, and the val AUC difference.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_gpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch import benchmd  # noqa: E402

SECTION = "bench_gpu"
KAGGLE_ARCH = ["arch.embedding_dim=16", "arch.bottom_mlp=[512,256,64,16]", "arch.top_mlp=[512,256,1]"]
MLPERF_ARCH = ["arch.embedding_dim=128", "arch.bottom_mlp=[512,256,128]", "arch.top_mlp=[1024,1024,512,256,1]"]
SGD = ["hparams.embedding_optimizer=sgd", "hparams.dense_optimizer=sgd", "hparams.embedding_lr=0.1", "hparams.dense_lr=0.1"]
SCHEDULE = ["hparams.warmup_steps=100", "hparams.decay_start_step=300", "hparams.decay_steps=200"]


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    target_samples_per_s: float | None = None  # the target, when it has one
    note: str = ""


def _kaggle(batch: int, steps: int, *extra: str) -> tuple[str, ...]:
    return (*KAGGLE_ARCH, *SGD, f"hparams.batch_size={batch}", f"max_steps={steps}", "epochs=100", *extra)


def _mlperf(batch: int, steps: int, *extra: str) -> tuple[str, ...]:
    return (*MLPERF_ARCH, *SGD, f"hparams.batch_size={batch}", f"max_steps={steps}", "epochs=100", *extra)


ROWWISE_ADAM = ("hparams.embedding_optimizer=rowwise_adagrad", "hparams.dense_optimizer=adam", "hparams.dense_lr=0.001")
LOW_PRECISION = ("embedding_precision=fp16", "dense_precision=bf16")


def cases(group: str, quick: bool) -> list[Case]:
    k_steps, m_steps, eq_steps = (40, 12, 30) if quick else (3000, 200, 500)
    k_batch, m_batch = (64, 256) if quick else (2048, 65536)
    if group == "targets":
        return [
            Case("kaggle sgd fp32, single", _kaggle(k_batch, k_steps, "engine=single"), 2.0e6, "target 1"),
            Case("kaggle sgd fp32, pipeline (DMP)", _kaggle(k_batch, k_steps // 3, "engine=pipeline"), None, "the engine of d2edbbd"),
            Case("kaggle row-wise adagrad + adam, single", _kaggle(k_batch, k_steps, "engine=single", *ROWWISE_ADAM), 1.8e6, "target 2"),
            Case("kaggle fp16 tables + bf16 dense, single", _kaggle(k_batch, k_steps, "engine=single", *LOW_PRECISION), 1.8e6, "target 2"),
            Case("kaggle sgd fp32, single, cuda_graph=false", _kaggle(k_batch, k_steps // 3, "engine=single", "cuda_graph=false"), None, "no graph"),
        ]
    if group == "host":
        return [
            Case("kaggle sgd fp32, single, data in pinned host memory", _kaggle(k_batch, k_steps, "engine=single", "data_on_device=false"), None, "copy stream"),
        ]
    if group == "mlperf":
        return [
            Case("mlperf sgd fp32, single", _mlperf(m_batch, m_steps, "engine=single"), 3.9e6, "target 3"),
            Case("mlperf fp16 tables + bf16 dense, single", _mlperf(m_batch, m_steps, "engine=single", *LOW_PRECISION), 3.9e6, "target 3"),
            Case("mlperf fp16 tables + bf16 dense, pipeline (DMP)", _mlperf(m_batch, m_steps, "engine=pipeline", *LOW_PRECISION), None, "the engine of d2edbbd"),
            Case("mlperf fp16 tables + bf16 dense, single, compile_dense", _mlperf(m_batch, m_steps, "engine=single", "compile_dense=true", *LOW_PRECISION), 3.9e6, "target 3, torch.compile"),
        ]
    if group == "equality":
        common = (*_kaggle(k_batch, eq_steps, *SCHEDULE), "log_every_steps=1")
        return [
            Case("equality: single, graphed", (*common, "engine=single", "cuda_graph=auto")),
            Case("equality: single, eager", (*common, "engine=single", "cuda_graph=false")),
            Case("equality: pipeline (DMP)", (*common, "engine=pipeline")),
        ]
    raise SystemExit(f"unknown group {group!r}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def steady_rate(history: list[dict], skip_windows: int = 2) -> float:
    rates = [h["samples_per_s"] for h in history[skip_windows:]] or [h["samples_per_s"] for h in history]
    return statistics.median(rates) if rates else math.nan


def run_group(data: Path, out: Path, group: str, quick: bool, runs: Path | None = None) -> None:
    import torch

    from recsearch import config
    from recsearch.train import trainer

    out.mkdir(parents=True, exist_ok=True)
    for case in cases(group, quick):
        log_every = [] if any(o.startswith("log_every_steps=") for o in case.overrides) else ["log_every_steps=100" if not quick else "log_every_steps=5"]
        overrides = [
            f"data_dir={data}", f"output_dir={(runs or out / 'runs') / _slug(case.name)}",
            "eval_rows=200000", "latency_batch_sizes=[256]", "latency_iters=20", "latency_max_seconds=3", "tensorboard=false",
            "overwrite_output=true",  # a rerun of the script (the GPU window's second try) replaces the case's run
            *log_every, *case.overrides,
        ]
        record: dict = {"group": group, "case": case.name, "overrides": overrides, "note": case.note,
                        "target_samples_per_s": case.target_samples_per_s}
        started = time.perf_counter()
        try:
            cfg = config.build(trainer.TrainConfig, config.apply_overrides({}, overrides), origin=case.name)
            result = trainer.train(cfg)
            record.update(
                status=result.status,
                steady_samples_per_s=steady_rate(result.history),
                samples_per_s_overall=result.samples_per_s,
                step_time_ms=result.step_time_ms,
                val_auc=result.auc("val"),
                engine=result.engine,
                losses=[h["loss"] for h in result.history] if group == "equality" else None,
                peak_memory_mb=result.peak_memory_mb_per_rank,
            )
        except Exception as err:  # noqa: BLE001 - a failed case is recorded, the next one runs
            record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=8))
        record["wall_s"] = round(time.perf_counter() - started, 1)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        rate = record.get("steady_samples_per_s")
        print(f"[bench_gpu] {case.name}: {record['status']}, "
              f"{'%.3fM samples/s' % (rate / 1e6) if rate else record.get('error', '')}, "
              f"graph {record.get('engine', {}).get('cuda_graph')}, {record['wall_s']} s", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def profile_step(data: Path, out: Path, quick: bool) -> None:
    """Where an eager single-engine step of the MLPerf model (bf16 dense, fp16 tables) spends its
    GPU time: torch.profiler over 4 steps after 3, the top kernels by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    from recsearch import config
    from recsearch.data import layout
    from recsearch.data.loader import NpyBatchLoader
    from recsearch.model.dlrm import table_rows
    from recsearch.train import trainer
    from recsearch.train.engine import make_engine

    batch = 256 if quick else 65536
    overrides = [f"data_dir={data}", "engine=single", "cuda_graph=false",
                 *_mlperf(batch, 10, *LOW_PRECISION)]
    cfg = config.build(trainer.TrainConfig, config.apply_overrides({}, overrides))
    device = trainer.init_distributed(cfg.device)
    meta = layout.read_meta(data)
    rows = table_rows(meta.num_embeddings_per_feature, None)
    loader = NpyBatchLoader(data, "train", batch, shuffle=True, num_embeddings_per_feature=rows,
                            pin_memory=device.type == "cuda", meta=meta)
    engine = make_engine(cfg, rows, device, 1, loader)
    engine.set_lr_multiplier(1.0)
    engine.start_stretch(0, 0)
    for _ in range(3):
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(4):
            engine.step()
        engine.take_loss_sum()
    engine.end_stretch()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    print(table)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps({"group": "profile", "case": "mlperf bf16/fp16 eager step profile", "status": "completed", "table": table}) + "\n")


def run_anchors(out: Path, script: Path, quick: bool) -> None:
    """TorchRec's DMP + pipeline loop and a plain nn.EmbeddingBag loop (../shared/gpu/bench_anchor.py)."""
    steps = ["--steps", "20", "--warmup", "5"] if quick else ["--steps", "300", "--warmup", "50"]
    runs = {
        "anchor: bare TorchRec DMP + TrainPipelineSparseDist, kaggle fp32 b2048": ["--mode", "torchrec", "--batch", "2048", "--arch", "kaggle"],
        "anchor: plain PyTorch nn.EmbeddingBag, kaggle fp32 b2048": ["--mode", "plain", "--batch", "2048", "--arch", "kaggle"],
    }
    for name, args in runs.items():
        cmd = [sys.executable, str(script), *args, *steps]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        record: dict = {"group": "anchors", "case": name, "command": cmd, "status": "failed"}
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                record.update(json.loads(line[len("RESULT "):]), status="completed")
        if record["status"] == "failed":
            record["error"] = (proc.stderr or proc.stdout)[-2000:]
        record["wall_s"] = round(time.perf_counter() - started, 1)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[bench_gpu] {name}: {record['status']} {record.get('samples_per_s', '')}", flush=True)


def _rel_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)), default=math.nan)


# Ratios the report quotes when both cases ran in the same run: (faster, slower, what it shows).
RATIOS = (
    ("kaggle sgd fp32, single", "kaggle sgd fp32, pipeline (DMP)", "single engine vs the DMP pipeline (d2edbbd's engine)"),
    ("kaggle sgd fp32, single", "anchor: bare TorchRec DMP + TrainPipelineSparseDist, kaggle fp32 b2048", "vs a bare TorchRec DMP loop"),
    ("kaggle sgd fp32, single", "anchor: plain PyTorch nn.EmbeddingBag, kaggle fp32 b2048", "vs a plain PyTorch loop"),
    ("kaggle sgd fp32, single", "kaggle sgd fp32, single, cuda_graph=false", "graph replay vs the same step eagerly"),
    ("mlperf fp16 tables + bf16 dense, single", "mlperf fp16 tables + bf16 dense, pipeline (DMP)", "MLPerf model, single engine vs the DMP pipeline"),
)


def _rate(record: dict) -> float | None:
    if record.get("status") != "completed":
        return None
    return record.get("steady_samples_per_s") or record.get("samples_per_s")


def _profile_rows(table: str) -> list[tuple[str, str, str]]:
    """(name, self CUDA time, its share) of each row of a key_averages table with GPU time."""
    import re

    rows = []
    for line in table.splitlines():
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) == 11 and fields[7].endswith("%") and fields[0] != "Name" and float(fields[7][:-1]) > 0:
            rows.append((fields[0], fields[6], fields[7]))
    return rows


def report(results: list[Path], md: Path | None, device: str, note: str = "") -> str:
    """The BENCHMARKS.md section from one or more results.jsonl files (each file one run)."""
    records = []
    for run, path in enumerate(results, 1):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                record.setdefault("run", run)
                records.append(record)
    runs = sorted({r["run"] for r in records})
    lines = [
        f"## Trainer on one GPU: engines side by side ({device}, {date.today().isoformat()})",
        "",
        "`bash tools/gpu_check.sh` (`python tools/bench_gpu.py run|anchors|profile|report`) on synthetic Criteo Kaggle "
        "data (configs/data/synthetic_kaggle.yaml with num_days=4 rows_per_day=2000000: 6M train rows; Kaggle's 26 full "
        "cardinalities, 33.8M rows). Each row is `recsearch train` end to end (data path, LR schedule, logging, loss "
        "read-back once per 100 steps); samples/s is the median over its log windows after the first two (the eager "
        "warm-up and the capture). ops/step: ops the host dispatched in a steady step (a graph replay is one launch "
        "besides them); ops in a step: what one eager step dispatches. torch 2.11, torchrec 1.6.1, fbgemm-gpu 1.6.0"
        + (f"; {len(runs)} runs of the script, the run column says which." if len(runs) > 1 else "."),
        *(["", note] if note else []),
        "",
        "| case | run | engine | CUDA graph | samples/s | target | met | ms/step (all steps) | val AUC | note |",
        "|---|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in records:
        if r["group"] in ("equality", "anchors", "profile", "pytest"):
            continue
        if r["status"] == "failed":
            lines.append(f"| {r['case']} | {r['run']} | | | failed: {r.get('error', '')[:120]} | | | | | |")
            continue
        eng = r.get("engine", {})
        rate, target = r.get("steady_samples_per_s"), r.get("target_samples_per_s")
        met = "" if target is None else ("yes" if rate >= target else "**no**")
        total = eng.get("graphed_steps", 0) + eng.get("eager_steps", 0)
        graph = f"yes ({eng.get('graphed_steps')}/{total} steps)" if eng.get("cuda_graph") else "no"
        lines.append(
            f"| {r['case']} | {r['run']} | {eng.get('engine')} | {graph} | {rate / 1e6:.3f}M | "
            f"{'' if target is None else f'{target / 1e6:.1f}M'} | {met} | {r.get('step_time_ms')} | "
            f"{r.get('val_auc') or float('nan'):.4f} | {r.get('note', '')}; ops/step {eng.get('ops_per_step')}, ops in a step {eng.get('ops_in_step')} |"
        )
    anchors = [r for r in records if r["group"] == "anchors"]
    if anchors:
        lines += ["", "Anchors in the same run (bench_anchor.py of the team's GPU bundle, ../shared/gpu beside the repository, not in it; tools/gpu_check.sh runs it from the copy in .gpu/: SGD, random one-hot ids, batches pre-pinned, no data path):", ""]
        for r in anchors:
            value = (f"{r['samples_per_s'] / 1e6:.3f}M samples/s ({r['ms_per_step']:.2f} ms/step)" if r["status"] == "completed"
                     else f"failed: {r.get('error', '')[-200:]}")
            lines.append(f"- {r['case']} (run {r['run']}): {value}")
    ratio_lines = []
    for fast, slow, what in RATIOS:
        for run in runs:
            a = next((r for r in records if r["case"] == fast and r["run"] == run), None)
            b = next((r for r in records if r["case"] == slow and r["run"] == run), None)
            if a and b and _rate(a) and _rate(b):
                ratio_lines.append(f"- {what} (run {run}): {_rate(a) / _rate(b):.2f}x")
    if ratio_lines:
        lines += ["", "Ratios within one run:", "", *ratio_lines]
    eq = {r["case"]: r for r in records if r["group"] == "equality" and r["status"] != "failed"}
    if len(eq) >= 2:
        names = list(eq)
        lines += ["", f"Same config and seed on the three paths ({len(eq[names[0]]['losses'])} steps, Kaggle model at batch 2048, "
                  "SGD, warmup 100 / decay from 300 over 200, every step's loss logged):", ""]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                lines.append(
                    f"- {a} vs {b}: largest relative loss difference {_rel_diff(eq[a]['losses'], eq[b]['losses']):.2e}, "
                    f"val AUC {eq[a]['val_auc']:.5f} vs {eq[b]['val_auc']:.5f}"
                )
    for r in records:
        if r["group"] == "equality" and r["status"] == "failed":
            lines.append(f"- {r['case']}: failed: {r.get('error', '')[:200]}")
        if r["group"] == "pytest":
            lines += ["", f"`{r['case']}` (run {r['run']}): {r['summary']}"]
        if r["group"] == "profile":
            lines += ["", f"torch.profiler, {r['case']} (run {r['run']}): the ops with the most GPU time of their own "
                      "over 4 steps (eager, so every kernel shows):", "", "| op or kernel | self CUDA | share |", "|---|---:|---:|",
                      *[f"| `{name}` | {cuda} | {share} |" for name, cuda, share in _profile_rows(r["table"])[:8]]]
    body = "\n".join(lines) + "\n"
    if md is not None:
        benchmd.write_section(md, SECTION, body)
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_gpu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--group", required=True, choices=("targets", "host", "mlperf", "equality"))
    r.add_argument("--runs", type=Path, default=None, help="where the runs' output directories go (default OUT/runs)")
    r.add_argument("--quick", action="store_true", help="tiny steps and batches (checking the tool on a CPU)")
    pr = sub.add_parser("profile")
    pr.add_argument("--data", type=Path, required=True)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--quick", action="store_true")
    a = sub.add_parser("anchors")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--anchor-script", type=Path, required=True)
    a.add_argument("--quick", action="store_true")
    rec = sub.add_parser("record", help="append a line of another tool's outcome (e.g. pytest's summary)")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--group", required=True)
    rec.add_argument("--case", required=True)
    rec.add_argument("--summary", required=True)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, default=None, help="the run's folder (its results.jsonl)")
    p.add_argument("--results", type=Path, nargs="*", default=[], help="results.jsonl files, one per run")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--note", default="", help="a paragraph put under the section's description")
    p.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_group(args.data, args.out, args.group, args.quick, args.runs)
    elif args.command == "profile":
        profile_step(args.data, args.out, args.quick)
    elif args.command == "record":
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps({"group": args.group, "case": args.case, "status": "completed", "summary": args.summary}) + "\n")
    elif args.command == "anchors":
        run_anchors(args.out, args.anchor_script, args.quick)
    else:
        device = args.device
        if device is None:
            import torch

            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        results = [*args.results, *([args.out / "results.jsonl"] if args.out else [])]
        if not results:
            parser.error("report needs --out or --results")
        print(report(results, args.md, device, args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
