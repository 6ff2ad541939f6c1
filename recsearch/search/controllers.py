"""Controllers: what to try next. Ask/tell, like Optuna's and TorchRec's proposers.

    spec = controller.propose()          # a TrialSpec, or None when the controller has nothing left
    controller.observe(spec, reward)     # reward: the objective (higher is better), None if infeasible
    controller.state_dict() / load_state_dict(d)   # a resumed search continues where it stopped

Several proposals may be outstanding at once (parallel trials); each is matched to its
observation by its choices. Rewards come from the search loop: AUC, penalized when the trial
breaks the latency budget; an infeasible candidate (tables do not fit) is observed with None and
ranks below every trained one (the actor-critic's shaped returns) or becomes a penalty below the
worst reward seen (TPE), so the controller learns to avoid it.

- RandomController: uniform over the space, never repeating a point until all were tried.
- ActorCriticController: an autoregressive policy (GRU over the decisions, one softmax head per
  decision) with a critic in two parts: V(prefix), the value of each partial decision sequence
  (PPO's baseline), and Q(config), a Bayesian reward model of the whole sequence that screens the
  policy's samples (critic-guided proposals). The policy learns with PPO's clipped objective on a
  replay of observed trials, rank-normal returns, plus an entropy bonus.
- BayesianController: Optuna's TPE sampler over the same categorical decisions (a baseline), never
  repeating a point either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from recsearch import remote
from recsearch.search import reward_model
from recsearch.search.space import SearchSpace
from recsearch.types import TrialSpec

INFEASIBLE_MARGIN = 0.05  # an infeasible trial's reward: this much below the worst reward seen


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The policy network is tiny: with several OpenMP threads on a busy machine its backward
    runs ~35x slower (measured on 2 cores under load), so run it on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Controller(Protocol):
    def propose(self) -> TrialSpec | None: ...

    def observe(self, spec: TrialSpec, reward: float | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _penalized(reward: float | None, history: list[float]) -> float:
    if reward is not None and math.isfinite(reward):
        return float(reward)
    worst = min(history) if history else 0.0
    return worst - INFEASIBLE_MARGIN


def unseen_uniform(space: SearchSpace, seen: set[tuple[int, ...]], rng: np.random.Generator) -> tuple[int, ...]:
    """A configuration not in `seen`, uniformly over the rest (rejection sampling: call it only
    while len(seen) < space.cardinality)."""
    while True:
        choices = tuple(int(rng.integers(n)) for n in space.sizes)
        if choices not in seen:
            return choices


class RandomController:
    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self._rng = np.random.default_rng(seed)
        self._seen: set[tuple[int, ...]] = set()

    def propose(self) -> TrialSpec | None:
        if len(self._seen) >= self.space.cardinality:
            return None
        choices = unseen_uniform(self.space, self._seen, self._rng)
        self._seen.add(choices)
        return self.space.decode(choices)

    def observe(self, spec: TrialSpec, reward: float | None) -> None:
        self._seen.add(self.space.choices_of(spec))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "seen": sorted(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._seen = {tuple(s) for s in state["seen"]}


class _PolicyNet(nn.Module):
    """GRU over the decision sequence; per-decision option heads (actor) and a value head (critic)."""

    def __init__(self, sizes: tuple[int, ...], hidden: int):
        super().__init__()
        self.sizes = sizes
        self.start = nn.Parameter(torch.zeros(hidden))
        self.embed = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        self.cell = nn.GRUCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.value = nn.Linear(hidden, 1)

    def forward(self, choices: torch.Tensor | None, generator: torch.Generator | None = None, samples: int = 1):
        """Run the sequence. With choices [B, D] given, score them; else sample `samples` sequences.

        Returns (choices [B, D], log_prob [B, D], entropy [B, D], value [B, D])."""
        batch = samples if choices is None else choices.shape[0]
        h = torch.zeros(batch, self.start.numel())
        x = self.start.expand(batch, -1)
        picked, logps, ents, values = [], [], [], []
        for d, head in enumerate(self.heads):
            h = self.cell(x, h)
            values.append(self.value(h)[:, 0])
            dist = torch.distributions.Categorical(logits=head(h))
            if choices is None:
                c = torch.multinomial(dist.probs, 1, generator=generator)[:, 0]
            else:
                c = choices[:, d]
            picked.append(c)
            logps.append(dist.log_prob(c))
            ents.append(dist.entropy())
            x = self.embed[d](c)
        return (torch.stack(picked, 1), torch.stack(logps, 1), torch.stack(ents, 1), torch.stack(values, 1))


@dataclass(frozen=True)
class PPOSettings:
    """The actor-critic's learning settings.

    A search trains tens of models, not thousands of episodes, so the policy learns after every
    observation from a replay of the recent trials (PPO's clipped ratio against each trial's
    behaviour log-probs keeps old samples from pushing the policy further than the trust region),
    instead of waiting for on-policy batches it would see only a handful of times."""

    hidden: int = 64
    # Adam moves every weight by about lr per step whatever the gradient's size; at 0.03 the
    # policy's entropy halved within five trials on synthetic searches (premature convergence).
    lr: float = 0.01
    update_every: int = 1  # observations between updates
    replay: int = 64  # most recent observed trials each update learns from
    epochs: int = 4  # passes over the replay per update
    clip: float = 0.2
    entropy_weight: float = 0.01
    value_weight: float = 0.5
    # Critic-guided proposals: the policy samples this many new configurations and the reward
    # model Q picks one by Thompson sampling; 1 proposes the policy's sample as it is.
    candidates: int = 16

    def __post_init__(self) -> None:
        if (min(self.hidden, self.update_every, self.replay, self.epochs, self.candidates) < 1
                or self.lr <= 0 or self.clip <= 0):
            raise ValueError(f"PPO settings out of range: {self}")


def shaped_returns(rewards: list[float | None]) -> list[float]:
    """Each trial's return: the normal score of its reward's rank among all observed trials
    (ties share a rank; infeasible trials, None, rank below every trained one).

    Rank-based on purpose: AUCs differ in the third decimal while a latency or infeasibility
    penalty moves a reward by tenths, so a z-score would let a few penalized trials set the scale
    and flatten every difference between trained models; ranks keep "better" meaning better."""
    n = len(rewards)
    if n == 0:
        return []
    floor = min((r for r in rewards if r is not None), default=0.0) - 1.0
    keyed = [floor if r is None else float(r) for r in rewards]
    order = sorted(range(n), key=lambda i: keyed[i])
    ranks = [0.0] * n
    i = 0
    while i < n:  # average rank over ties
        j = i
        while j + 1 < n and keyed[order[j + 1]] == keyed[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    normal = torch.distributions.Normal(0.0, 1.0)
    return [float(normal.icdf(torch.tensor((r + 0.5) / n))) for r in ranks]


class ActorCriticController:
    """Actor-critic search with critic-guided proposals (a model-based actor-critic).

    Actor: the autoregressive policy. Critic: V(prefix), the GRU's value head, is the baseline of
    PPO's advantages; Q(config), a Bayesian linear reward model of the full decision sequence
    (recsearch.search.reward_model), judges whole configurations.

    Why Q screens proposals. The policy alone learns only through its PPO updates, a few small
    Adam steps per trial (larger ones collapsed its entropy within five trials), so it extracts
    little of what 20 trials show: in docs/BENCHMARKS.md the plain policy's median best val AUC
    at 20 trials was 0.7465, random's 0.7437 and TPE's 0.7474. A reward model uses every
    observation at once, and says how sure it is. So each proposal draws `candidates` new configurations from the policy (the actor
    keeps the search inside the region it has learned to prefer, and its entropy keeps that region
    broad) and proposes the one a Thompson draw from Q's posterior values most: options the
    evidence favours win, and options Q is unsure of win sometimes, in proportion to the chance
    that they are best, which is the exploration bonus. This is the actor proposing and the critic
    choosing, as in model-based actor-critic methods and value-guided sampling; the policy then
    learns from the chosen trials' returns as before (PPO's clipped ratio against the behaviour
    log-probs bounds how far a screened sample moves it). With no observations Q is its prior and
    the choice among the samples is random, so the first proposals are plain policy samples.

    Everything Q needs is refit from the observations, and the Thompson draws come from the saved
    generator, so a resumed search proposes exactly what the uninterrupted one would have."""

    def __init__(self, space: SearchSpace, seed: int = 0, settings: PPOSettings = PPOSettings()):
        self.space = space
        self.settings = settings
        torch.manual_seed(seed)
        self.net = _PolicyNet(space.sizes, settings.hidden)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.lr)
        self._generator = torch.Generator().manual_seed(seed)
        self._pending: dict[tuple[int, ...], list[float]] = {}  # choices -> behaviour log-probs
        # every observed trial in order: (choices, behaviour log-probs, reward or None if infeasible)
        self._observed: list[tuple[tuple[int, ...], list[float], float | None]] = []
        self.updates = 0
        self.losses: list[dict[str, float]] = []  # per update: policy/value loss, entropy (why it learns)
        self._seen: set[tuple[int, ...]] = set()

    def propose(self) -> TrialSpec | None:
        if len(self._seen) >= self.space.cardinality:
            return None
        with torch.no_grad(), _one_thread():
            rng = np.random.default_rng(int(torch.randint(1 << 30, (1,), generator=self._generator)))
            pool = self._policy_samples(rng)
            choices = pool[0] if len(pool) == 1 else pool[self._screen(pool, rng)]
            _, logp, _, _ = self.net(torch.tensor([choices]))  # behaviour log-probs for PPO
        self._seen.add(choices)
        self._pending[choices] = [float(x) for x in logp[0]]
        return self.space.decode(choices)

    @property
    def rewards(self) -> list[float]:
        """Every observed reward in order, an infeasible one as a penalty below the worst before it
        (for reports and tests: the policy itself learns from `shaped_returns`)."""
        out: list[float] = []
        for _, _, reward in self._observed:
            out.append(_penalized(reward, out))
        return out

    def _policy_samples(self, rng: np.random.Generator) -> list[tuple[int, ...]]:
        """Up to `candidates` distinct configurations never tried, sampled from the policy."""
        sampled, _, _, _ = self.net(None, self._generator, samples=self.settings.candidates)
        pool = list(dict.fromkeys(tuple(int(c) for c in row) for row in sampled))
        fresh = [c for c in pool if c not in self._seen]
        if fresh:
            return fresh
        # A converged policy keeps sampling points already tried: explore around its sample,
        # changing one decision at a time until the point is new.
        choices = pool[0]
        while choices in self._seen:
            mutated = list(choices)
            d = int(rng.integers(len(mutated)))
            mutated[d] = int(rng.integers(self.space.sizes[d]))
            choices = tuple(mutated)
        return [choices]

    def _features(self, choices: tuple[int, ...]) -> np.ndarray:
        return reward_model.one_hot(choices, self.space.relevant(choices), self.space.sizes)

    def critic_q(self) -> reward_model.Posterior:
        """Q(config): the reward model fitted to every observed trial's shaped return."""
        width = reward_model.feature_width(self.space.sizes)
        features = np.array([self._features(c) for c, _, _ in self._observed]).reshape(-1, width)
        return reward_model.fit(features, np.array(shaped_returns([r for _, _, r in self._observed])))

    def _screen(self, pool: list[tuple[int, ...]], rng: np.random.Generator) -> int:
        """Index of the candidate a Thompson draw from Q's posterior values most."""
        weights = self.critic_q().sample_weights(rng)
        scores = np.array([self._features(c) for c in pool]) @ weights
        return int(np.argmax(scores))

    def observe(self, spec: TrialSpec, reward: float | None) -> None:
        choices = self.space.choices_of(spec)
        self._seen.add(choices)
        feasible = reward is not None and math.isfinite(reward)
        old_logp = self._pending.pop(choices, None)
        if old_logp is None:  # a trial this policy did not propose (e.g. a seed config)
            with torch.no_grad(), _one_thread():
                _, logp, _, _ = self.net(torch.tensor([choices]))
            old_logp = [float(x) for x in logp[0]]
        self._observed.append((choices, old_logp, float(reward) if feasible else None))
        if len(self._observed) % self.settings.update_every == 0:
            with _one_thread():
                self._update()

    def _update(self) -> None:
        s = self.settings
        returns_all = shaped_returns([r for _, _, r in self._observed])
        recent = self._observed[-s.replay:]
        choices = torch.tensor([c for c, _, _ in recent])
        old_logp = torch.tensor([lp for _, lp, _ in recent])
        returns = torch.tensor(returns_all[-s.replay:], dtype=torch.float32)
        # Decisions that do not affect the model (e.g. DCN knobs under a dot interaction) get no
        # credit, so their choice is not reinforced by an unrelated reward.
        relevant = torch.tensor([self.space.relevant(tuple(c)) for c in choices.tolist()], dtype=torch.float32)
        for _ in range(s.epochs):
            _, logp, entropy, values = self.net(choices)
            advantage = (returns[:, None] - values).detach()  # the critic: value of each decision prefix
            ratio = torch.exp(logp - old_logp)
            clipped = torch.clamp(ratio, 1 - s.clip, 1 + s.clip)
            policy_loss = -(torch.min(ratio * advantage, clipped * advantage) * relevant).sum() / relevant.sum()
            value_loss = ((values - returns[:, None]) ** 2).mean()
            mean_entropy = entropy.mean()
            loss = policy_loss + s.value_weight * value_loss - s.entropy_weight * mean_entropy
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.optimizer.step()
        self.updates += 1
        self.losses.append({"policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach()),
                            "entropy": float(mean_entropy.detach()), "trials": len(self._observed)})

    def probabilities(self) -> list[list[float]]:
        """Greedy-path option probabilities of each decision (for reports and tests)."""
        with torch.no_grad():
            h = torch.zeros(1, self.settings.hidden)
            x = self.net.start[None]
            out = []
            for d, head in enumerate(self.net.heads):
                h = self.net.cell(x, h)
                p = torch.softmax(head(h), -1)[0]
                out.append([float(v) for v in p])
                x = self.net.embed[d](p.argmax()[None])
            return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "pending": [[list(k), v] for k, v in self._pending.items()],
            "observed": [[list(c), lp, r] for c, lp, r in self._observed],
            "losses": [dict(x) for x in self.losses],
            "updates": self.updates,
            "seen": [list(c) for c in sorted(self._seen)],
            # provenance: which learning settings produced this state (bench_search re-runs
            # actor-critic searches made with other settings instead of reusing them)
            "settings": dataclasses.asdict(self.settings),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._generator.set_state(state["generator"])
        self._pending = {tuple(k): v for k, v in state["pending"]}
        self._observed = [(tuple(c), list(lp), r) for c, lp, r in state["observed"]]
        self.losses = [dict(x) for x in state.get("losses", [])]
        self.updates = int(state["updates"])
        self._seen = {tuple(c) for c in state["seen"]}


class BayesianController:
    """Optuna's TPE over the decisions (each a categorical of option indices).

    Never proposes a configuration twice, like the other controllers: TPE samples a point already
    proposed or observed now and then (always, once it has converged), so such an ask is told to
    Optuna as FAIL (TPE ignores failed trials: the point's real observation is not counted twice,
    nor ranked low) and asked again, up to `max_asks` times; then an unseen point is drawn
    uniformly (and enqueued, so Optuna still records the trial). None once every point was seen.

    The state is the observations, every configuration seen, and how many asks were made; a
    resumed controller rebuilds the study from the observations with a sampler seeded from
    (seed, asks), so it neither replays the proposals TPE's random startup made before nor
    depends on Optuna's private RNG state."""

    def __init__(self, space: SearchSpace, seed: int = 0, max_asks: int = 32):
        import optuna  # optional dependency: only the Bayesian baseline needs it

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.seed = seed
        self.max_asks = max_asks
        self._optuna = optuna
        self._distributions = {
            d.name: optuna.distributions.CategoricalDistribution(list(range(len(d.options))))
            for d in space.decisions
        }
        self.asks = 0  # study.ask() calls over the controller's life (resumes included)
        self.study = self._new_study(seed)
        self._trials: dict[tuple[int, ...], Any] = {}  # outstanding proposals: choices -> Optuna trial
        self._seen: set[tuple[int, ...]] = set()  # every configuration proposed or observed
        self._rng = np.random.default_rng(seed)  # the uniform fallback's draws
        self.rewards: list[float] = []

    def _new_study(self, seed: int) -> Any:
        sampler = self._optuna.samplers.TPESampler(seed=seed)
        return self._optuna.create_study(direction="maximize", sampler=sampler)

    def propose(self) -> TrialSpec | None:
        if len(self._seen) >= self.space.cardinality:
            return None
        for _ in range(self.max_asks):
            trial, choices = self._ask()
            if choices not in self._seen:
                return self._proposed(trial, choices)
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        # TPE keeps returning to points it has: an unseen point, uniformly (the space is not exhausted)
        choices = unseen_uniform(self.space, self._seen, self._rng)
        self.study.enqueue_trial({d.name: c for d, c in zip(self.space.decisions, choices)})
        trial, asked = self._ask()
        if asked != choices:
            raise RuntimeError(f"Optuna ignored the enqueued parameters {choices}: it suggested {asked}")
        return self._proposed(trial, choices)

    def _ask(self) -> tuple[Any, tuple[int, ...]]:
        trial = self.study.ask()
        self.asks += 1
        choices = tuple(
            int(trial.suggest_categorical(d.name, list(range(len(d.options))))) for d in self.space.decisions
        )
        return trial, choices

    def _proposed(self, trial: Any, choices: tuple[int, ...]) -> TrialSpec:
        self._seen.add(choices)
        self._trials[choices] = trial
        return self.space.decode(choices)

    def observe(self, spec: TrialSpec, reward: float | None) -> None:
        choices = self.space.choices_of(spec)
        self._seen.add(choices)
        value = _penalized(reward, self.rewards)
        self.rewards.append(value)
        trial = self._trials.pop(choices, None)
        if trial is None:  # not proposed by this study (a warm start, a seed config, a resumed search)
            params = {d.name: c for d, c in zip(self.space.decisions, choices)}
            self.study.add_trial(self._optuna.trial.create_trial(
                params=params, distributions=self._distributions, value=value))
        else:
            self.study.tell(trial, value)

    def state_dict(self) -> dict[str, Any]:
        # Finished trials are enough for TPE: it is a function of the observations (and its seed).
        done = [
            ([int(t.params[d.name]) for d in self.space.decisions], float(t.value))
            for t in self.study.trials
            if t.value is not None
        ]
        return {"observations": done, "rewards": list(self.rewards), "seen": [list(c) for c in sorted(self._seen)],
                "asks": self.asks, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # States saved before "asks" and "seen" existed: the observations are what was seen.
        self.asks = int(state.get("asks", len(state["observations"])))
        resumed_seed = int(np.random.SeedSequence([self.seed, self.asks]).generate_state(1)[0])
        self.study = self._new_study(resumed_seed)
        self._trials = {}
        for choices, value in state["observations"]:
            params = {d.name: c for d, c in zip(self.space.decisions, choices)}
            self.study.add_trial(self._optuna.trial.create_trial(
                params=params, distributions=self._distributions, value=value))
        self.rewards = list(state["rewards"])
        self._seen = {tuple(c) for c in state.get("seen", [c for c, _ in state["observations"]])}
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]


def save_state(controller: Controller, path) -> None:
    """Atomically save a controller's state (tensors and plain values only)."""
    buffer = io.BytesIO()
    torch.save(controller.state_dict(), buffer)
    remote.write_bytes(path, buffer.getvalue())


class ControllerStateError(ValueError):
    """controller.pt cannot be loaded into this search's controller (corrupt, truncated, foreign)."""


def load_state(controller: Controller, path) -> None:
    """Load a saved state; weights_only=True, so the file cannot run code. A file that is not a
    state of this controller over this space (corrupt, truncated, another controller's) is a
    ControllerStateError naming the file (the controller may then be half-loaded: discard it)."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which
        raise ControllerStateError(f"{path}: not a controller state file ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ControllerStateError(f"{path}: not a controller state file (holds a {type(state).__name__})")
    try:
        controller.load_state_dict(state)
    except Exception as err:  # missing keys, other shapes: another controller's or space's state
        raise ControllerStateError(
            f"{path}: does not fit this search's {type(controller).__name__} and space "
            f"({type(err).__name__}: {err})"
        ) from err


def make_controller(name: str, space: SearchSpace, seed: int = 0) -> Controller:
    if name == "random":
        return RandomController(space, seed)
    if name in ("actor_critic", "ppo"):
        return ActorCriticController(space, seed)
    if name in ("bayesian", "tpe"):
        return BayesianController(space, seed)
    raise ValueError(f"controller must be random, actor_critic or bayesian, got {name!r}")
