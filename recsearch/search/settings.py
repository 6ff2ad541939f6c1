"""A search's settings: the search YAML (configs/search/*.yaml) as typed, validated dataclasses,
and `load_search_config`, which checks everything that can be checked before a search starts
(every setting, the base train config, the data, the space) and reports it all at once.

Torch-free: the search's base train config is read through recsearch.train.config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsearch import config
from recsearch.search.objective import ObjectiveConfig
from recsearch.search.runners import TorchxSettings
from recsearch.search.space import SearchSpace, SpaceConfig
from recsearch.tables import feature_name, load_tables, table_name
from recsearch.train.config import TrainConfig
from recsearch.types import TableSpec, Topology

RUNNERS = ("inprocess", "subprocess", "pool", "torchx")
CONTROLLERS = ("random", "actor_critic", "bayesian")
# every running trial journals (and fsyncs) a heartbeat this often at most
MIN_HEARTBEAT_S = 0.1
# a trial's progress file is rewritten every BEAT_INTERVAL_S (5 s) while it works: a stall timeout
# must leave room for several beats and for a slow step between them
MIN_STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunnerConfig:
    """`runner:` how trials run."""

    kind: str = "subprocess"  # inprocess | subprocess | pool | torchx
    concurrency: int = 1  # trials at a time
    threads: int = 1  # CPU threads per trial (OMP_NUM_THREADS); 0: leave unset
    retries: int = 1  # reruns of a trial (at its rung) whose worker died with the search process
    poll_s: float = 0.5
    # kill a trial still running this long after it started (subprocess, torchx) and record it
    # FAILED ("timed out"); the search goes on. None: no limit
    trial_timeout_s: float | None = None
    # kill a trial (subprocess, pool) that shows no sign of work this long: its progress.json
    # (recsearch.train.progress, rewritten every few seconds while it trains, evaluates or
    # times) and its train.log both unchanged; recorded FAILED ("stalled"). Catches a hang
    # whatever the trial's length. None: no stall detection
    stall_timeout_s: float | None = 1800.0
    # CUDA trials on this host share its devices: each trial may allocate at most this share of a
    # device's memory (torch.cuda.set_per_process_memory_fraction), so one trial over it fails
    # alone ("CUDA out of memory", recorded) instead of starving the others. None: 1/concurrency
    # when several trials run at once, else no cap
    device_memory_share: float | None = None
    torchx: TorchxSettings = field(default_factory=TorchxSettings)

    def memory_share(self, compute_device: str) -> float | None:
        """The device memory share each trial is capped at, or None (no cap: CPU trials, torchx
        jobs, which their scheduler gives devices of their own, or one trial at a time)."""
        if compute_device != "cuda" or self.kind == "torchx":
            return None
        if self.device_memory_share is not None:
            return self.device_memory_share
        return 1.0 / self.concurrency if self.concurrency > 1 else None

    def problems(self) -> list[str]:
        """'runner.key: what' for every bad setting."""
        out = []
        if self.kind not in RUNNERS:
            out.append(f"runner.kind: must be {', '.join(RUNNERS)}, got {self.kind!r}")
        out += _at_least("runner.concurrency", self.concurrency, 1)
        if self.kind == "inprocess" and self.concurrency != 1:
            out.append("runner.concurrency: runner.kind inprocess runs one trial at a time: set runner.concurrency: 1")
        out += _at_least("runner.threads", self.threads, 0)
        out += _at_least("runner.retries", self.retries, 0)
        out += _at_least("runner.poll_s", self.poll_s, 0.01, "s")
        if self.trial_timeout_s is not None:
            out += _at_least("runner.trial_timeout_s", self.trial_timeout_s, 1.0, "s (or null: no limit)")
            if self.kind == "inprocess":
                out.append("runner.trial_timeout_s: the inprocess runner cannot stop a running trial; "
                           "use runner.kind subprocess, or set it to null")
        if self.stall_timeout_s is not None:
            out += _at_least("runner.stall_timeout_s", self.stall_timeout_s, MIN_STALL_TIMEOUT_S, "s (or null: no stall detection)")
        share = self.device_memory_share
        if share is not None:
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                out.append(f"runner.device_memory_share: must be in (0, 1] or null, got {share!r}")
            elif isinstance(self.concurrency, int) and share * self.concurrency > 1 + 1e-9:
                out.append(f"runner.device_memory_share: {share:g} x runner.concurrency {self.concurrency} = "
                           f"{share * self.concurrency:g} > 1: the trials sharing a device would be promised "
                           "more memory than it has")
        t = self.torchx
        out += _at_least("runner.torchx.cpu", t.cpu, 1)
        out += _at_least("runner.torchx.gpu", t.gpu, 0)
        out += _at_least("runner.torchx.memMB", t.memMB, 1)
        return out


@dataclass(frozen=True)
class FidelityConfig:
    """`fidelity:` successive halving over training rows (one rung: no early stopping)."""

    train_rows: tuple[int, ...]  # rows of the train split per rung, ascending
    eta: int = 3  # keep the best 1/eta at each rung
    bracket_size: int = 0  # configurations decided together; 0: eta ** (rungs - 1)

    def problems(self) -> list[str]:
        out = []
        rows = list(self.train_rows)
        if not rows or any(r <= 0 for r in rows) or rows != sorted(set(rows)):
            out.append(f"fidelity.train_rows: must be positive and strictly increasing, got {rows}")
        return out + _at_least("fidelity.eta", self.eta, 2) + _at_least("fidelity.bracket_size", self.bracket_size, 0)


@dataclass(frozen=True)
class TopologyConfig:
    """`topology:` the devices the model is placed on (the placement and memory check's target)."""

    devices: int = 1
    memory_per_device_mb: float = 1024.0  # for embedding tables + optimizer state
    compute_device: str = "cpu"  # cpu | cuda

    def topology(self) -> Topology:
        return Topology(self.devices, int(self.memory_per_device_mb * 2**20), self.compute_device)

    def problems(self) -> list[str]:
        out = _at_least("topology.devices", self.devices, 1)
        if not (math.isfinite(self.memory_per_device_mb) and self.memory_per_device_mb > 0):
            out.append(f"topology.memory_per_device_mb: must be a positive number, got {self.memory_per_device_mb}")
        if self.compute_device not in ("cpu", "cuda"):
            out.append(f"topology.compute_device: must be cpu or cuda, got {self.compute_device!r}")
        return out


@dataclass(frozen=True)
class SearchConfig:
    """A search (configs/search/*.yaml)."""

    data_dir: str
    fidelity: FidelityConfig
    # tables of a data_dir without meta.json (TorchRec's npy files), for every trial; see TrainConfig
    num_embeddings_per_feature: tuple[int, ...] | None = None
    train: str | None = None  # base `recsearch train` config file (what trials inherit)
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over `train`'s
    space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: str = "actor_critic"  # random | actor_critic | bayesian
    trials: int = 10  # configurations trained (the budget); rejected candidates do not count
    max_rejected: int = 0  # stop proposing after this many rejected candidates; 0: 10 x trials
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    placer: str = "auto"  # a recsearch.placement.registry name; auto: learned, else size_lookup_greedy
    reference: bool = True  # train the base config once (human baseline; default latency budget)
    stats: str | None = None  # table statistics (recsearch data stats); default <data_dir>/stats.json
    output_dir: str = "runs/search"
    heartbeat_s: float = 10.0  # a journal line (fsynced) per running trial every heartbeat_s
    seed: int = 0
    # an Optuna journal file (recsearch optuna export, or any study over this space's decisions):
    # its completed trials are observed by the new search's controller before its first proposal
    warm_start: str | None = None

    def problems(self) -> list[str]:
        """'key: what' for every bad setting of the search itself (not its base train config,
        data or space: load_search_config checks those), all at once."""
        out = []
        if self.controller not in CONTROLLERS:
            out.append(f"controller: must be {', '.join(CONTROLLERS)}, got {self.controller!r}")
        out += _at_least("trials", self.trials, 1)
        out += _at_least("max_rejected", self.max_rejected, 0)
        out += _at_least("heartbeat_s", self.heartbeat_s, MIN_HEARTBEAT_S, "s")
        out += _at_least("seed", self.seed, 0)
        out += self.fidelity.problems() + self.runner.problems() + self.topology.problems()
        out += self.objective.problems()
        if self.objective.metric == "latency" and self.objective.budget_ms is None and not self.reference:
            out.append("objective.budget_ms: null (= the reference config's latency) but reference is false: "
                       "set a budget or train the reference")
        return out


# What `--resume` takes from an edited search.yaml: keys that decide how and how long the search
# goes on, not what its finished trials were (how they were trained, measured, rejected or
# scored). Everything else is fixed when the search starts (new keys too, until listed here):
# fidelity (rungs mixing row counts in a bracket), space and controller (controller.pt is of
# that shape and kind; the trials' decisions), objective (rewards and rejections already
# recorded), topology, placer and stats (placements, memory and cost checks), data_dir,
# num_embeddings_per_feature, seed and the base train config (what every trial trained), reference.
RESUME_CHANGEABLE = (
    "trials", "max_rejected", "runner", "heartbeat_s", "warm_start",
    "output_dir",  # the search directory is --resume's argument; this one is not read
    "train",  # null in a resolved config: the base config is `base:`
    # base train config keys that change no trial's result: logging, TensorBoard, checkpoints,
    # prefetching, where the data lives in memory; the search sets the others it overrides itself
    "base.log_every_steps", "base.tensorboard", "base.tensorboard_hparams", "base.checkpoint_every_steps",
    "base.prefetch_batches", "base.data_on_device", "base.upload_to", "base.overwrite_output",
    "base.resume_from", "base.device_lock",
)


@dataclass(frozen=True)
class ConfigChange:
    """A key of the resolved search config whose value differs from when the search started."""

    key: str  # dotted: fidelity.train_rows
    started: Any
    now: Any


def resume_changes(started: dict[str, Any], now: dict[str, Any], also_changeable: tuple[str, ...] = ()) -> list[ConfigChange]:
    """The keys `--resume` refuses to change: those whose value in `now` (the edited search.yaml,
    resolved) differs from `started` (the copy written when the search started), except the
    RESUME_CHANGEABLE ones. Both are read with this recsearch's defaults first (`_with_defaults`),
    so a setting added since the search started is not taken for a change; a key of a free-form
    mapping (space.model_args, base.model_args) set on one side only is one. `also_changeable`:
    keys this search's journal lets change (objective.budget_ms before any candidate's reward)."""
    old, new = _flat(_with_defaults(started)), _flat(_with_defaults(now))
    unset = _Unset()
    return [ConfigChange(key, old.get(key, unset), new.get(key, unset)) for key in sorted(old.keys() | new.keys())
            if old.get(key, unset) != new.get(key, unset) and not _changeable(key, also_changeable)]


class _Unset:
    """A key a mapping does not hold (shown as 'not set')."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unset)

    def __hash__(self) -> int:
        return 0


def _with_defaults(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved search config (search.yaml) with every key, defaults filled in: the search
    settings as SearchConfig and `base:` as TrainConfig read them. One that does not build (written
    by another recsearch version) is compared as it is."""
    try:
        raw = dict(resolved)
        base = raw.pop("base", None) or {}
        out = config.to_dict(config.build(SearchConfig, {**raw, "base": {}}))
        out["base"] = config.to_dict(config.build(TrainConfig, base)) if base else {}
        return out
    except (config.ConfigError, TypeError, ValueError):
        return resolved


def resume_change_problems(changes: list[ConfigChange], search_yaml: Path, started_copy: Path) -> list[str]:
    """One line per refused change (the key, its value when the search started and now), then
    what to do and what --resume does take."""
    lines = [f"{search_yaml}: {c.key}: was {_show(c.started)} when the search started ({started_copy.name}), "
             f"now {_show(c.now)}" for c in changes]
    keys = ", ".join(c.key for c in changes)
    lines.append(f"the finished trials were trained, measured and judged with the old {keys}, so --resume cannot "
                 f"change {'it' if len(changes) == 1 else 'them'}: put the old value back, or start a new search from "
                 f"the edited file (recsearch search --config {search_yaml} --out NEW_DIR). --resume takes changes to: "
                 + ", ".join(k + (".*" if k in ("runner",) else "") for k in RESUME_CHANGEABLE if k != "train")
                 + " (docs/SEARCH.md)")
    return lines


def _changeable(key: str, also: tuple[str, ...] = ()) -> bool:
    return any(key == k or key.startswith(k + ".") for k in (*RESUME_CHANGEABLE, *also))


def _flat(raw: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of nested mappings (lists stay whole values; an empty mapping adds none)."""
    if not isinstance(raw, dict):
        return {prefix: raw} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _show(value: Any) -> str:
    if isinstance(value, _Unset):
        return "not set"
    return repr(value) if isinstance(value, str) else json.dumps(value)


def _at_least(key: str, value: float, low: float, unit: str = "") -> list[str]:
    """['key: what'] unless value is a finite number >= low."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= low:
        return []
    return [f"{key}: must be >= {low:g}{' ' + unit if unit else ''}, got {value!r}"]


@dataclass(frozen=True)
class Resolved:
    """A validated search: its config, the base train config (a TrainConfig), the data's tables."""

    cfg: SearchConfig
    base: TrainConfig  # the base train config: the reference trial, and what every trial starts from
    space: SearchSpace
    tables: tuple[TableSpec, ...]  # the data's tables (rows, pooling, reuse) at the space's first dim
    train_split_rows: int

    def resolved_dict(self, search_dir: Path) -> dict[str, Any]:
        raw = config.to_dict(self.cfg)
        raw["train"] = None
        raw["base"] = {k: v for k, v in config.to_dict(self.base).items() if k not in ("output_dir",)}
        raw["data_dir"] = str(Path(self.cfg.data_dir).resolve())
        raw["base"]["data_dir"] = raw["data_dir"]
        raw["output_dir"] = str(search_dir.resolve())
        return raw


def load_search_config(path: Path | str, overrides: list[str] | None = None) -> Resolved:
    """Parse and validate a search config, every problem at once; then check the search is
    possible at all (data present, rungs within the data, something fits the topology)."""
    from recsearch.data.dataset import dataset_meta

    path = Path(path)
    raw = config.apply_overrides(config.load_yaml(path), overrides or [])
    origins = config.Origins.of(path, overrides)  # a bad key=value names the command line, not the file
    cfg = config.build(SearchConfig, raw, origins)
    at = origins.locate
    settings = [at(p) for p in cfg.problems()]  # every numeric and named setting
    problems = list(settings)
    base_raw: dict[str, Any] = {}
    origin = f"{path}: base"
    if cfg.train:
        try:
            base_raw = config.load_yaml(cfg.train)
        except config.ConfigError as err:
            problems += [f"{path}: train: {p}" for p in err.problems]
        origin = f"{cfg.train} (base of {path})"
    base_raw = _merge(base_raw, cfg.base)
    base_raw["data_dir"] = cfg.data_dir
    if cfg.num_embeddings_per_feature is not None:
        base_raw["num_embeddings_per_feature"] = list(cfg.num_embeddings_per_feature)
    base_raw.setdefault("output_dir", "unused")
    try:
        base = config.build(TrainConfig, base_raw, origins.section("base", origin))
    except config.ConfigError as err:
        problems += err.problems
        base = None
    f = cfg.fidelity
    if cfg.runner.kind in ("inprocess", "pool") and cfg.topology.devices != 1:
        problems.append(at(f"runner.kind: {cfg.runner.kind} trains on one rank; topology.devices is {cfg.topology.devices}"))
    gpus = cfg.runner.torchx.gpu
    if cfg.runner.kind == "torchx" and gpus and gpus < cfg.topology.devices:  # one host, a rank per device
        problems.append(at(f"runner.torchx.gpu: each torchx trial runs topology.devices={cfg.topology.devices} ranks on one "
                           f"host, a GPU each, and asks for {gpus} GPUs: set runner.torchx.gpu to at least "
                           f"{cfg.topology.devices}"))
    try:
        meta = dataset_meta(cfg.data_dir, base.num_embeddings_per_feature if base is not None else None)
    except (FileNotFoundError, ValueError) as err:
        problems.append(at(f"data_dir: {err}"))
        meta = None
    if meta is not None:
        train_rows = sum(meta.day_rows[:-1])
        eval_rows = meta.day_rows[-1] // 2
        if f.train_rows and f.train_rows[-1] > train_rows:
            problems.append(at(f"fidelity.train_rows: top rung {f.train_rows[-1]:,} > the train split's {train_rows:,} rows"))
        batch = cfg.objective.serving_batch
        if batch > eval_rows:
            problems.append(at(f"objective.serving_batch: {batch} > the test split's {eval_rows:,} rows"))
    if base is not None and not settings:
        problems += [at(p) for p in _reference_problems(cfg, base)]
    if settings or base is None or meta is None:
        # the checks below need sane settings, the base config and the data
        raise config.ConfigError(problems)
    topology = cfg.topology.topology()
    try:
        space = SearchSpace(cfg.space, topology, f.train_rows[-1], cfg.seed)
        lowest = min(cfg.space.batch_size) * topology.world_size
        if lowest > f.train_rows[0]:
            problems.append(at(
                f"fidelity.train_rows: the lowest rung ({f.train_rows[0]:,} rows) is smaller than "
                f"one batch ({lowest:,})"
            ))
    except ValueError as err:
        problems.append(at(f"space: {err}"))
        space = None
    problems += [at(p) for p in _unknown_optimizers(cfg.space)]
    if cfg.space.model_args and base is not None and base.model is None:
        problems.append(at("space.model_args: decisions of a model of your own, and the base train config's "
                           "model is null: name its factory there (model: package.module:function)"))
    if cfg.placer != "auto":
        from recsearch.placement.registry import TRAIN_PLACERS

        if cfg.placer not in TRAIN_PLACERS:
            problems.append(at(f"placer: {cfg.placer!r} is not one of auto, {', '.join(TRAIN_PLACERS)} "
                               "(trials shard every table table-wise, so torchrec_dp's replicas are not offered)"))
    try:
        tables = tuple(data_tables(cfg, base, meta))
    except ValueError as err:
        problems.append(at(f"stats: {err}"))
        tables = ()
    if cfg.warm_start is not None:
        from recsearch.search.optuna_io import warm_start_problems

        problems += [at(f"warm_start: {p}") for p in warm_start_problems(cfg.warm_start, space)]
    if cfg.controller == "bayesian":
        try:
            import optuna  # noqa: F401 - the Bayesian controller's sampler, checked before anything is written
        except ImportError as err:
            problems.append(at(f"controller: bayesian needs optuna, which cannot be imported ({err}): "
                               "pip install 'recsearch[search]', or pick random or actor_critic"))
    if problems or space is None:
        raise config.ConfigError(problems)
    return Resolved(cfg, base, space, tables, train_rows)


def _reference_problems(cfg: SearchConfig, base: TrainConfig) -> list[str]:
    """The base train config as the reference trial: its batch must be one a rung can hold (the
    trainer's own checks of each key run when the TrainConfig is built)."""
    batch = base.hparams.batch_size
    key = "base.hparams.batch_size"
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        return [f"{key}: must be a positive integer, got {batch!r}"]
    top = cfg.fidelity.train_rows[-1]
    if cfg.reference and batch * cfg.topology.devices > top:
        return [f"{key}: the reference trains on the top rung ({top:,} rows), which is smaller than its "
                f"batch ({batch:,} x {cfg.topology.devices} devices)"]
    return []


def _unknown_optimizers(space: SpaceConfig) -> list[str]:
    """Optimizer names the trainer does not know: errors now, not one failed trial per candidate.
    (A known optimizer the device cannot run, e.g. adam tables on CPU, stays a trial failure.)"""
    from recsearch.train.optim import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS

    problems = []
    for key, known in (("embedding_optimizer", EMBEDDING_OPTIMIZERS), ("dense_optimizer", DENSE_OPTIMIZERS)):
        unknown = [name for name in getattr(space, key) if name not in known]
        if unknown:
            problems.append(f"space.{key}: {', '.join(map(repr, unknown))} not one of {', '.join(known)}")
    return problems


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def data_tables(cfg: SearchConfig, base: TrainConfig, meta: Any) -> list[TableSpec]:
    """The model's tables for this data: rows as the trainer builds them (capped), pooling factor
    and reuse histogram from the statistics file when there is one (better cost estimates)."""
    from recsearch.model.dlrm import table_rows

    rows = table_rows(meta.num_embeddings_per_feature, base.max_rows_per_table)
    stats_path = Path(cfg.stats) if cfg.stats else Path(cfg.data_dir) / "stats.json"
    stats: list[TableSpec] = []
    if cfg.stats or stats_path.exists():
        stats = load_tables(stats_path)
        if len(stats) != len(rows):
            raise ValueError(f"{stats_path} has {len(stats)} tables, the data has {len(rows)}")
    bytes_per_value = 2 if base.embedding_precision == "fp16" else 4
    return [
        TableSpec(
            name=table_name(i), num_rows=int(n), dim=1,
            pooling_factor=stats[i].pooling_factor if stats else 1.0,
            reuse_hist=stats[i].reuse_hist if stats else (),
            feature_names=(feature_name(i),), bytes_per_value=bytes_per_value,
        )
        for i, n in enumerate(rows)
    ]
