"""The search space: what a controller may choose, as a fixed sequence of discrete decisions.

Every dimension is a finite list of options (numeric ranges are given as explicit lists or as a
log-scale grid), so one representation serves all controllers: random search samples option
indices, the actor-critic policy emits them autoregressively, and the Bayesian baseline sees them
as categorical parameters. `SearchSpace.decode(choices)` turns a vector of option indices into a
TrialSpec; constraints between dimensions (the bottom MLP must end in the embedding dim) are
satisfied by construction, never by rejection (a decay may not start inside warmup, so it starts
when warmup ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from recsearch.types import (
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    ArchSpec,
    HParams,
    Interaction,
    SettingsError,
    Topology,
    TrialSpec,
)


@dataclass(frozen=True)
class LogGrid:
    """`num` values spaced evenly in log scale between low and high (both included)."""

    low: float
    high: float
    num: int = 5

    def values(self) -> tuple[float, ...]:
        if not (0 < self.low <= self.high) or self.num < 1:
            raise ValueError(f"log grid needs 0 < low <= high and num >= 1, got {self}")
        if self.num == 1 or self.low == self.high:
            return (self.low,)
        step = (math.log(self.high) - math.log(self.low)) / (self.num - 1)
        return tuple(float(f"{math.exp(math.log(self.low) + i * step):.6g}") for i in range(self.num))


@dataclass(frozen=True)
class SpaceConfig:
    """The YAML `space:` section. Each list is the options of one decision."""

    embedding_dim: tuple[int, ...] = (16,)
    bottom_depth: tuple[int, ...] = (2, 3)  # hidden layers before the final (embedding_dim) layer
    bottom_width: tuple[int, ...] = (128, 256, 512)
    top_depth: tuple[int, ...] = (1, 2)  # hidden layers before the final logit
    top_width: tuple[int, ...] = (256, 512)
    interaction: tuple[Interaction, ...] = (Interaction.DOT, Interaction.DCN)
    dcn_num_layers: tuple[int, ...] = (1, 2, 3)
    dcn_low_rank_dim: tuple[int, ...] = (64, 256)
    batch_size: tuple[int, ...] = (1024, 2048, 4096)
    embedding_optimizer: tuple[str, ...] = ("rowwise_adagrad",)
    embedding_lr: LogGrid = LogGrid(0.01, 0.3, 4)
    dense_optimizer: tuple[str, ...] = ("adagrad",)
    dense_lr: LogGrid = LogGrid(0.003, 0.1, 4)
    warmup_steps: tuple[int, ...] = (0,)
    decay_start_step: tuple[int, ...] = (0,)  # polynomial LR decay (MLPerf DLRM's): where it starts
    decay_steps: tuple[int, ...] = (0,)  # and how long it lasts; 0: no decay
    # decisions a model of the user's own declares (train config `model`): name -> its options,
    # searched like the ones above and passed to the model's factory as model_args
    model_args: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = space_problems(self)
        if problems:
            raise SettingsError(problems)


# The built-in DLRM's architecture knobs: a model of the user's own (the base train config's
# `model`) is given the tables (embedding_dim, hence not here) and its own model_args, never these
DLRM_ARCH = ("bottom_depth", "bottom_width", "top_depth", "top_width", "interaction", "dcn_num_layers",
             "dcn_low_rank_dim")
POSITIVE = ("embedding_dim", "bottom_width", "top_width", "batch_size", "dcn_low_rank_dim")
NON_NEGATIVE = ("bottom_depth", "top_depth", "dcn_num_layers", "warmup_steps", "decay_start_step", "decay_steps")


def _grid_problem(name: str, grid: LogGrid) -> str | None:
    try:
        grid.values()
    except (ValueError, TypeError):
        return f"{name} must be a log grid with 0 < low <= high and num >= 1, got low {grid.low!r}, high {grid.high!r}, num {grid.num!r}"
    return None


def space_problems(space: SpaceConfig) -> list[str]:
    """'decision: what' for every bad option list of the space, all at once: an empty list, an
    option given twice, a width or batch that is not positive, a depth or step count below 0, a
    log grid that is no grid, an optimizer the trainer does not know, and embedding dims that
    contradict an interaction (each dim x interaction is built once). Each problem starts with
    the decision's name, so a config loader names where it was set (the file or the command line)."""
    problems = []
    for name in SpaceConfig.__dataclass_fields__:
        if name == "model_args":
            continue
        raw = getattr(space, name)
        if isinstance(raw, LogGrid):
            why = _grid_problem(name, raw)
            problems += [why] if why else []
            continue
        options = tuple(raw)
        if not options:
            problems.append(f"{name} has no options (an empty list)")
        elif len(set(options)) != len(options):
            problems.append(f"{name} lists an option twice: {[_shown(o) for o in options]}")
        if name in POSITIVE and any(_bad_int(v, 1) for v in options):
            problems.append(f"{name} options must be positive integers, got {[_shown(o) for o in options]}")
        if name in NON_NEGATIVE and any(_bad_int(v, 0) for v in options):
            problems.append(f"{name} options must be >= 0 (integers), got {[_shown(o) for o in options]}")
    for key, known in (("embedding_optimizer", EMBEDDING_OPTIMIZERS), ("dense_optimizer", DENSE_OPTIMIZERS)):
        unknown = [name for name in getattr(space, key) if name not in known]
        if unknown:
            problems.append(f"{key}: {', '.join(map(repr, unknown))} not one of {', '.join(known)}")
    for name, raw in space.model_args.items():
        options = tuple(_frozen(o) for o in raw)
        if not options:
            problems.append(f"model_args.{name} has no options (an empty list)")
        elif len(set(options)) != len(options):
            problems.append(f"model_args.{name} lists an option twice: {list(raw)}")
    if not any(p.startswith(("embedding_dim ", "interaction ")) for p in problems):
        problems += _architecture_problems(space)
    return problems


def _shown(option: Any) -> Any:
    return option.value if isinstance(option, Interaction) else option


def _bad_int(value: Any, low: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < low


def _architecture_problems(space: SpaceConfig) -> list[str]:
    """Contradictions between architecture decisions, found now rather than by a trial that
    crashes the search when first decoded (e.g. the projection interaction's branches end in 128
    units, which an embedding dim of 48 does not divide). MLP widths and depths cannot contradict."""
    problems = []
    for dim in space.embedding_dim:
        for inter in space.interaction:
            try:
                ArchSpec(embedding_dim=int(dim), bottom_mlp=(int(dim),), top_mlp=(1,), interaction=Interaction(inter))
            except ValueError as err:
                problems.append(f"embedding_dim {dim} with interaction {Interaction(inter).value}: {err}")
    return [f"embedding_dim has contradictory options: {'; '.join(problems)}"] if problems else []


def user_model_problems(space: SpaceConfig, model: str | None) -> list[str]:
    """With a model of the user's own (`model`, the base train config's factory), the built-in
    DLRM's architecture decisions searched over several options: the factory never sees them, so
    each would multiply the trials without changing the model. One problem per such decision,
    saying how to fix it. (embedding_dim is the tables' width the factory is given; batch size,
    optimizers, learning rates, warmup and decay train any model.)"""
    if not model:
        return []
    # the DCN knobs matter only under the DCN interaction (the controllers know): without it among
    # the options, their defaults' several options are left alone
    dcn = Interaction.DCN in {Interaction(i) for i in space.interaction}

    def listed(options: tuple[Any, ...]) -> str:
        return "[" + ", ".join(str(_shown(o)) for o in options) + "]"

    return [
        f"space.{name}: {listed(getattr(space, name))}: a knob of the built-in DLRM, and the base model "
        f"{model} does not receive it: fix it to one option (e.g. space.{name}={listed(getattr(space, name)[:1])}); "
        f"the model's own decisions go under space.model_args"
        for name in DLRM_ARCH if len(getattr(space, name)) > 1 and (dcn or not name.startswith("dcn_"))
    ]


MODEL_ARG = "model_args."  # the prefix of a user model's decisions among the space's


def _frozen(option: Any) -> Any:
    """A YAML option as a hashable value (lists become tuples), to compare options."""
    return tuple(_frozen(o) for o in option) if isinstance(option, (list, tuple)) else option


def _thawed(option: Any) -> Any:
    """The option as the factory gets it (tuples back to lists)."""
    return [_thawed(o) for o in option] if isinstance(option, tuple) else option


@dataclass(frozen=True)
class Decision:
    name: str
    options: tuple[object, ...]


@dataclass(frozen=True)
class SearchSpace:
    space: SpaceConfig
    topology: Topology
    train_rows: int
    seed: int = 0
    decisions: tuple[Decision, ...] = field(init=False)

    def __post_init__(self) -> None:
        # (the SpaceConfig checked its options when it was made: space_problems)
        decisions = []
        for name in SpaceConfig.__dataclass_fields__:
            if name == "model_args":
                continue
            raw = getattr(self.space, name)
            decisions.append(Decision(name, raw.values() if isinstance(raw, LogGrid) else tuple(raw)))
        for name, raw in self.space.model_args.items():  # after the built-in ones: their indices stay put
            decisions.append(Decision(f"{MODEL_ARG}{name}", tuple(_frozen(o) for o in raw)))
        object.__setattr__(self, "decisions", tuple(decisions))
        if self.train_rows <= 0:
            raise ValueError(f"search space: train_rows must be positive, got {self.train_rows}")
        smallest_batch = min(self.space.batch_size)
        if smallest_batch * self.topology.world_size > self.train_rows:
            raise ValueError(
                f"search space: train_rows={self.train_rows} is smaller than one global batch "
                f"(batch {smallest_batch} x {self.topology.world_size} ranks)"
            )

    def describe(self) -> str:
        """The space in one line, for the search's first output and the benchmark's setup text:
        the decisions that vary with their options, then those fixed to one option, then the
        number of configurations (what a trial budget is a fraction of)."""
        def text(options: tuple[object, ...], name: str) -> str:
            raw = getattr(self.space, name, None)  # (a user model's decisions are not attributes)
            if isinstance(raw, LogGrid) and len(options) > 1:
                return f"log grid {raw.low:g}-{raw.high:g} x{len(options)}"
            shown = [o.value if isinstance(o, Interaction) else o for o in options]
            return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in shown)

        # a model of the user's own (it has decisions of its own) never sees the DLRM's architecture knobs
        hidden = DLRM_ARCH if self.space.model_args else ()
        varied = [f"{d.name} [{text(d.options, d.name)}]" for d in self.decisions
                  if len(d.options) > 1 and d.name not in hidden]
        fixed = [f"{d.name} {text(d.options, d.name)}" for d in self.decisions
                 if len(d.options) == 1 and d.name not in hidden]
        return (f"{len(varied)} decisions, {self.cardinality:,} configurations: " + "; ".join(varied)
                + (f" (fixed: {', '.join(fixed)})" if fixed else ""))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of options of each decision, in order."""
        return tuple(len(d.options) for d in self.decisions)

    @property
    def cardinality(self) -> int:
        return math.prod(self.sizes)

    def decode(self, choices: tuple[int, ...], trial_id: int = -1) -> TrialSpec:
        if len(choices) != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} choices, got {len(choices)}")
        value = {}
        for decision, index in zip(self.decisions, choices):
            if not 0 <= index < len(decision.options):
                raise ValueError(f"{decision.name}: option {index} out of range")
            value[decision.name] = decision.options[index]
        dim = int(value["embedding_dim"])
        bottom = (int(value["bottom_width"]),) * int(value["bottom_depth"]) + (dim,)
        top = (int(value["top_width"]),) * int(value["top_depth"]) + (1,)
        arch = ArchSpec(
            embedding_dim=dim,
            bottom_mlp=bottom,
            top_mlp=top,
            interaction=Interaction(value["interaction"]),
            dcn_num_layers=int(value["dcn_num_layers"]),
            dcn_low_rank_dim=int(value["dcn_low_rank_dim"]),
        )
        hparams = HParams(
            batch_size=int(value["batch_size"]),
            embedding_optimizer=str(value["embedding_optimizer"]),
            embedding_lr=float(value["embedding_lr"]),
            dense_optimizer=str(value["dense_optimizer"]),
            dense_lr=float(value["dense_lr"]),
            warmup_steps=int(value["warmup_steps"]),
            # decay may not start inside warmup (the trainer refuses it): start it when warmup ends
            decay_start_step=max(int(value["decay_start_step"]), int(value["warmup_steps"]))
            if int(value["decay_steps"]) else 0,
            decay_steps=int(value["decay_steps"]),
            seed=self.seed,
        )
        return TrialSpec(
            trial_id=trial_id,
            arch=arch,
            hparams=hparams,
            train_rows=self.train_rows,
            topology=self.topology,
            extra={"choices": ",".join(str(c) for c in choices)},
            model_args={name[len(MODEL_ARG):]: _thawed(v) for name, v in value.items() if name.startswith(MODEL_ARG)},
        )

    def choices_of(self, spec: TrialSpec) -> tuple[int, ...]:
        """The option indices a spec was decoded from (recorded in spec.extra)."""
        raw = spec.extra.get("choices")
        if raw is None:
            raise ValueError(f"trial {spec.trial_id} was not produced by a search space")
        return tuple(int(c) for c in raw.split(","))

    def relevant(self, choices: tuple[int, ...]) -> tuple[bool, ...]:
        """Which decisions affect the model (DCN knobs matter only for the DCN interaction)."""
        interaction = self.decisions[self._index("interaction")].options[
            choices[self._index("interaction")]
        ]
        dcn = Interaction(interaction) is Interaction.DCN
        decays = bool(self.decisions[self._index("decay_steps")].options[choices[self._index("decay_steps")]])
        return tuple((dcn or not d.name.startswith("dcn_")) and (decays or d.name != "decay_start_step")
                     for d in self.decisions)

    def _index(self, name: str) -> int:
        return next(i for i, d in enumerate(self.decisions) if d.name == name)
