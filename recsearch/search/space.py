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

from recsearch.types import ArchSpec, HParams, Interaction, Topology, TrialSpec


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
        decisions = []
        for name in SpaceConfig.__dataclass_fields__:
            if name == "model_args":
                continue
            raw = getattr(self.space, name)
            options = raw.values() if isinstance(raw, LogGrid) else tuple(raw)
            if not options:
                raise ValueError(f"search space: {name} has no options (an empty list)")
            if len(set(options)) != len(options):
                raise ValueError(f"search space: {name} lists an option twice: {list(options)}")
            decisions.append(Decision(name, options))
        for name, raw in self.space.model_args.items():  # after the built-in ones: their indices stay put
            options = tuple(_frozen(o) for o in raw)
            if not options:
                raise ValueError(f"search space: model_args.{name} has no options (an empty list)")
            if len(set(options)) != len(options):
                raise ValueError(f"search space: model_args.{name} lists an option twice: {list(raw)}")
            decisions.append(Decision(f"{MODEL_ARG}{name}", options))
        object.__setattr__(self, "decisions", tuple(decisions))
        for name in ("embedding_dim", "bottom_width", "top_width", "batch_size", "dcn_low_rank_dim"):
            if any(int(v) <= 0 for v in getattr(self.space, name)):
                raise ValueError(f"search space: {name} options must be positive")
        for name in ("bottom_depth", "top_depth", "dcn_num_layers", "warmup_steps", "decay_start_step", "decay_steps"):
            if any(int(v) < 0 for v in getattr(self.space, name)):
                raise ValueError(f"search space: {name} options must be >= 0")
        if self.train_rows <= 0:
            raise ValueError(f"search space: train_rows must be positive, got {self.train_rows}")
        self._check_architectures()
        smallest_batch = min(self.space.batch_size)
        if smallest_batch * self.topology.world_size > self.train_rows:
            raise ValueError(
                f"search space: train_rows={self.train_rows} is smaller than one global batch "
                f"(batch {smallest_batch} x {self.topology.world_size} ranks)"
            )

    def _check_architectures(self) -> None:
        """Contradictions between architecture decisions are errors now, not trials that crash the
        search when first decoded (e.g. the projection interaction's branches end in 128 units,
        which an embedding dim of 48 does not divide). Every embedding dim x interaction (x DCN
        knobs) is built once; MLP widths and depths cannot contradict (checked positive above)."""
        problems = []
        for dim in self.space.embedding_dim:
            for inter in self.space.interaction:
                try:
                    ArchSpec(embedding_dim=int(dim), bottom_mlp=(int(dim),), top_mlp=(1,),
                             interaction=Interaction(inter))
                except ValueError as err:
                    problems.append(f"embedding_dim {dim} with interaction {Interaction(inter).value}: {err}")
        if problems:
            raise ValueError("search space: contradictory options: " + "; ".join(problems))

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

        varied = [f"{d.name} [{text(d.options, d.name)}]" for d in self.decisions if len(d.options) > 1]
        fixed = [f"{d.name} {text(d.options, d.name)}" for d in self.decisions if len(d.options) == 1]
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
