"""The learned placer: an actor-critic policy trained with PPO on the cost network's estimated MDP.

`recsearch place policy train --cost-net PREFIX --pool POOL --out PREFIX [--iters 300] [--minutes M]`
`recsearch place policy place --task TASK [--policy PREFIX] [--samples K] [--out placement.json]`
(command line: recsearch.placement.cli.policy)

The MDP (as DreamShard's, with the cost network standing in for hardware, so training needs none):
tables are placed one at a time in descending order of their cost-net cost alone; the state is,
per device, the sum of the cost-net encodings of the tables already there, its predicted cost
now and with the current table added, its memory and communication load; the action is a device.
Devices that cannot take the table are masked: those without memory for it, and those after which
the remaining tables could no longer be packed (a sufficient-slack test, else first-fit-decreasing
on the remaining tables), so the policy never paints itself into a corner on tight caps.

Rewards: r_k = -(C_{k+1} - C_k) / ref, where C_k is the estimated cost (slowest device's fwd+bwd
plus the all-to-all, `combine_costs`' rule) of the partial placement after k tables, and ref is a
per-task scale (the even split of the tables' standalone costs plus balanced communication). The
rewards telescope to -C_final / ref, the objective, but say at each step what that step cost, which
assigns credit far better than one reward at the end of a 200-step episode.

Networks. A per-device trunk MLP reads [device's encoding sum (scaled by tables per device), the
table's encoding, the device's load features, task-global features] and gives h_d; the actor scores
each device with a linear map of h_d (softmax over the unmasked devices) and the critic reads the
mean and max of h_d over devices. Both are permutation-equivariant/invariant over devices, so one
trained policy applies to any number of devices and tables without fine-tuning.

Training: PPO (clipped ratio 0.2, GAE with gamma 1 and lambda 0.95, value loss, entropy bonus) on
batches of episodes of tasks drawn from a training pool with varied table and device counts.
Monotone MDP (PPOConfig.monotone, off by default): a device's estimated cost is
the running maximum of the cost net's estimates as tables join it, so the policy cannot profit from
the net predicting a device cheaper after adding a table (see _Episodes.observe).

Decoding: greedy (argmax), or `samples=K`: K sampled placements plus the greedy one, the one the
MDP's estimate (the cost net's; its running max per device for a monotone policy) rates cheapest
kept, so never worse than greedy under that estimate.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsearch.placement.comm import comm_ms_of_dims
from recsearch.placement.cost_net import (
    CostNet,
    HeadEvaluator,
    load_weights,
    read_model_info,
    save_model_files,
)
from recsearch.placement.hardware import other_hardware_note
from recsearch.placement.tables import make_task
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Placement,
    PlacementError,
    alltoall_width,
    check_fits,
    no_room_error,
    rank_caps,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

DATA_DIR = Path(__file__).parent / "data"
SHIPPED = {"cpu": DATA_DIR / "policy_cpu", "cuda": DATA_DIR / "policy_h100"}
FORMAT = "recsearch.placement.policy/1"

NUM_DEVICE_FEATURES = 11
NUM_GLOBAL_FEATURES = 5


@dataclass(frozen=True)
class PolicyShape:
    hidden: int = 64


@dataclass(frozen=True)
class PPOConfig:
    iters: int = 300  # PPO iterations (one task, `episodes` episodes each)
    episodes: int = 16
    epochs: int = 4  # passes over each iteration's transitions
    minibatches: int = 2
    lr: float = 1e-3
    clip: float = 0.2
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 1
    max_seconds: float = 0.0  # stop early after this long (0: no limit)
    min_tables: int = 10
    max_tables: int = 100
    devices: tuple[int, ...] = (4, 8, 16)
    slack: float = 1.1
    num_tasks: int = 64  # distinct training tasks drawn from the pool
    # a device's estimated cost never falls when a table joins it (running max): see _Episodes.
    # Off by default (the H100 policy is raw); the shipped CPU policy uses it (docs/PLACEMENT.md)
    monotone: bool = False


class _PolicyNet(nn.Module):
    """embed: the width of the cost net's table encodings (CostNetShape.width)."""

    def __init__(self, embed: int, shape: PolicyShape):
        super().__init__()
        h = shape.hidden
        width = 2 * embed + NUM_DEVICE_FEATURES + NUM_GLOBAL_FEATURES
        self.trunk = nn.Sequential(nn.Linear(width, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.actor = nn.Linear(h, 1)
        self.critic = nn.Sequential(nn.Linear(2 * h, h), nn.Tanh(), nn.Linear(h, 1))

    def forward(
        self,
        dev_enc: torch.Tensor,  # [N, D, E] scaled encoding sums
        table_enc: torch.Tensor,  # [N, E]
        dev_feat: torch.Tensor,  # [N, D, NUM_DEVICE_FEATURES]
        glob: torch.Tensor,  # [N, NUM_GLOBAL_FEATURES]
        mask: torch.Tensor,  # [N, D] bool, True = allowed
        with_value: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [N, D] with masked devices at -1e9, value [N] or None when not asked: placing
        needs no critic)."""
        # trunk[0] on the concatenation [dev_enc | table_enc | dev_feat | glob], computed by input
        # block: the table's and the task's parts are the same for every device, so they are
        # multiplied once per row instead of once per device
        e, f = dev_enc.shape[-1], dev_feat.shape[-1]
        w, b = self.trunk[0].weight, self.trunk[0].bias
        shared = nn.functional.linear(table_enc, w[:, e : 2 * e]) + nn.functional.linear(
            glob, w[:, 2 * e + f :], b
        )
        x = (
            nn.functional.linear(dev_enc, w[:, :e])
            + nn.functional.linear(dev_feat, w[:, 2 * e : 2 * e + f])
            + shared[:, None, :]
        )
        h = self.trunk[3](self.trunk[2](self.trunk[1](x)))
        logits = self.actor(h).squeeze(-1).masked_fill(~mask, -1e9)
        if not with_value:
            return logits, None
        value = self.critic(torch.cat([h.mean(1), h.max(1).values], dim=-1)).squeeze(-1)
        return logits, value


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch: numpy's OpenBLAS starts its own threads for products this size,
    which on a busy 2-core machine made every numpy call after them slower; torch's matmul keeps
    to torch's thread setting."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


class _FastPolicy:
    """A numpy copy of a _PolicyNet's weights for rollouts (placing, and collecting PPO episodes).

    Why: a rollout is one small forward per table; torch's per-call overhead made placing 200
    tables on 16 devices take seconds, numpy takes a fraction of that. Same arithmetic as
    `_PolicyNet.forward` in float64 (a test holds them equal); the first layer is split by input
    block so the parts shared by every device (the table, the task) are multiplied once.
    """

    def __init__(self, net: _PolicyNet, embed: int):
        sd = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
        w1 = sd["trunk.0.weight"].T  # [in, h]: dev_enc | table_enc | dev_feat | glob
        e, f = embed, NUM_DEVICE_FEATURES
        self.w_dev, self.w_table = w1[:e], w1[e : 2 * e]
        self.w_feat, self.w_glob = w1[2 * e : 2 * e + f], w1[2 * e + f :]
        self.b1 = sd["trunk.0.bias"]
        self.w2, self.b2 = sd["trunk.2.weight"].T, sd["trunk.2.bias"]
        self.wa, self.ba = sd["actor.weight"][0], float(sd["actor.bias"][0])
        self.c1, self.cb1 = sd["critic.0.weight"].T, sd["critic.0.bias"]
        self.c2, self.cb2 = sd["critic.2.weight"][0], float(sd["critic.2.bias"][0])

    def __call__(
        self,
        dev_enc: np.ndarray,  # [B, D, E]
        table_enc: np.ndarray,  # [E]
        dev_feat: np.ndarray,  # [B, D, F]
        glob: np.ndarray,  # [G]
        mask: np.ndarray,  # [B, D] bool
        with_value: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        shared = table_enc @ self.w_table + glob @ self.w_glob + self.b1  # [h]
        h = np.tanh(_mm(dev_enc, self.w_dev) + dev_feat @ self.w_feat + shared)
        h = np.tanh(_mm(h, self.w2) + self.b2)  # [B, D, h]
        logits = np.where(mask, h @ self.wa + self.ba, -1e9)
        if not with_value:
            return logits, None
        c = np.tanh(np.concatenate([h.mean(1), h.max(1)], -1) @ self.c1 + self.cb1)
        return logits, c @ self.c2 + self.cb2


# ------------------------------------------------------------------------------ the environment


@dataclass(frozen=True)
class _Prepared:
    """Everything about one task the episodes need, computed once."""

    tables: tuple[TableSpec, ...]
    order: np.ndarray  # table indices in placement order
    enc: np.ndarray  # [T, E] cost-net encodings (float64)
    pre: np.ndarray  # [T, members, P] the cost heads' first-layer products of each table
    alone_ms: np.ndarray  # [T] predicted fwd + bwd of each table on a device of its own
    mem: np.ndarray  # [T] bytes
    dims: np.ndarray  # [T]
    cap: np.ndarray  # [D] each rank's memory cap in bytes (rank_caps)
    world: int
    ref_ms: float
    batch_size: int
    monotone: bool = False


def _prepare(
    tables: Sequence[TableSpec],
    topology: Topology,
    cost_net: CostNet,
    heads: HeadEvaluator,
    optimizer: str,
    monotone: bool = False,
) -> _Prepared:
    check_fits(tables, topology, optimizer)
    enc = cost_net.encode_tables(tables).double().numpy()
    pre = heads.pre(enc)
    alone = heads.ms_from_pre(pre).sum(-1)  # [T] fwd+bwd of each table on its own
    order = np.lexsort((np.arange(len(tables)), -alone))  # descending cost, then index
    world = topology.world_size
    dims = np.array([alltoall_width(t) for t in tables], dtype=np.float64)  # all-to-all widths
    meta = cost_net.meta
    assert meta is not None
    even_dims = np.full(world, dims.sum() / world)
    ref = max(float(alone.sum()) / world, float(alone.max())) + comm_ms_of_dims(
        even_dims, cost_net.comm_model, meta.batch_size, world
    ).max()
    return _Prepared(
        tables=tuple(tables),
        order=order,
        enc=enc,
        pre=pre,
        alone_ms=alone,
        mem=np.array([table_memory_bytes(t, optimizer) for t in tables], dtype=np.int64),
        dims=dims,
        cap=np.array(rank_caps(topology), dtype=np.int64),
        world=world,
        ref_ms=float(ref),
        batch_size=meta.batch_size,
        monotone=monotone,
    )


def _feasible_mask(free: np.ndarray, mem_t: int, rest_desc: np.ndarray) -> np.ndarray:
    """[B, D] free bytes -> [B, D] True where putting a table of mem_t bytes on that device still
    leaves a packing of the remaining tables (rest_desc, largest first): the sufficient test
    (free - remaining >= D x largest remaining: first fit cannot fail then) and otherwise
    first-fit-decreasing, vectorized over (episode, candidate device)."""
    fits = free >= mem_t
    if rest_desc.size == 0:
        return fits
    b, d = free.shape
    after = np.broadcast_to(free[:, None, :], (b, d, d)).copy()  # [B, cand, D]
    idx = np.arange(d)
    after[:, idx, idx] -= mem_t
    slack_ok = (after.sum(-1) - rest_desc.sum() >= d * rest_desc[0]) & (after.min(-1) >= 0)
    need = fits & ~slack_ok
    if not need.any():
        return fits
    sub = after[need]  # [M, D]
    ok = np.ones(len(sub), dtype=bool)
    suffix = np.cumsum(rest_desc[::-1])[::-1]  # bytes of tables j.. still to pack
    for j, m in enumerate(rest_desc):
        if j % 4 == 0 and (sub.sum(-1) - suffix[j] >= d * m).all():
            break  # the slack test now holds for the rest: first fit cannot fail any more
        room = sub >= m
        has = room.any(-1)
        ok &= has
        first = np.argmax(room, axis=-1)
        rows = np.nonzero(has)[0]
        sub[rows, first[rows]] -= m
    out = fits & slack_ok
    out[need] = ok
    return out


class _Episodes:
    """B placements of one task advanced together (numpy)."""

    def __init__(self, prep: _Prepared, cost_net: CostNet, heads: HeadEvaluator, batch: int):
        self.p, self.cost_net, self.heads, self.b = prep, cost_net, heads, batch
        d, e = prep.world, prep.enc.shape[1]
        self.dev_enc = np.zeros((batch, d, e))
        self.dev_pre = np.zeros((batch, d, *prep.pre.shape[1:]))  # sums of the tables' `pre`
        self.count = np.zeros((batch, d))
        self.used = np.zeros((batch, d), dtype=np.int64)
        self.dim_sum = np.zeros((batch, d))
        self.compute = np.zeros((batch, d))  # predicted fwd+bwd per device now
        self.ranks = np.zeros((batch, len(prep.tables)), dtype=np.int64)
        self.cost = np.zeros(batch)  # C_k: estimated cost of the partial placement
        self.step_index = 0
        self.eye = np.eye(d)
        mem_order = prep.mem[prep.order]
        # remaining tables after step k, by memory, largest first
        self.rest_desc = [np.sort(mem_order[k + 1 :])[::-1] for k in range(len(prep.order))]

    def observe(self) -> dict[str, np.ndarray]:
        """Inputs of the policy for the current table, and the predicted cost of each choice."""
        p, k = self.p, self.step_index
        t = int(p.order[k])
        d = p.world
        tables_per_dev = max(1.0, len(p.tables) / d)
        new = self.heads.ms_from_pre(self.dev_pre + p.pre[t]).sum(-1)  # [B, D] if placed on d
        if p.monotone:
            # The cost net is not monotone: its bounded interaction term can predict a device
            # cheaper after a table joins it (the CPU net: a dim-128, pooling-103 table alone
            # 36.8 ms, with four small tables added 32.0 ms). A
            # policy trained on the raw estimate can learn to pile tables onto such devices, so
            # the monotone MDP keeps each device's running maximum: adding a table never pays.
            new = np.maximum(new, self.compute)
        ref = p.ref_ms
        cur_max = self.compute.max(1, keepdims=True)
        new_max = np.maximum(cur_max, new)  # max compute if placed on d
        dims_after = self.dim_sum[:, None, :] + self.eye[None] * p.dims[t]  # [B, cand, D]
        comm_after = comm_ms_of_dims(dims_after, self.cost_net.comm_model, p.batch_size, d).max(-1)  # [B, D]
        comm_now = comm_ms_of_dims(self.dim_sum, self.cost_net.comm_model, p.batch_size, d)
        free = p.cap - self.used
        mask = _feasible_mask(free, int(p.mem[t]), self.rest_desc[k])
        if not mask.any(1).all():
            plain = free >= p.mem[t]
            mask = np.where(mask.any(1, keepdims=True), mask, plain)
        feat = np.stack(
            [
                self.compute / ref,
                new / ref,
                (new - self.compute) / ref,
                (new - cur_max) / ref,
                (new_max + comm_after) / ref - self.cost[:, None] / ref,
                comm_now / ref,
                comm_after / ref,
                self.used / np.maximum(p.cap, 1),
                (self.used + p.mem[t]) / np.maximum(p.cap, 1),
                self.count / tables_per_dev,
                (self.compute >= cur_max - 1e-9).astype(np.float64),
            ],
            axis=-1,
        )
        remaining = float(p.mem[p.order[k:]].sum()) / max(1, free.sum(1).max())
        glob = np.array(
            [k / len(p.tables), remaining, d / 16.0, len(p.tables) / 100.0, p.alone_ms[t] / ref]
        )
        return {
            "dev_enc": self.dev_enc / tables_per_dev,
            "table_enc": p.enc[t],
            "dev_feat": feat,
            "glob": glob,
            "mask": mask,
            "new": new,
            "comm_after": comm_after,
        }

    def step(self, action: np.ndarray, new: np.ndarray, comm_after: np.ndarray) -> np.ndarray:
        """Place the current table on action[b]; returns the rewards -(C_{k+1} - C_k) / ref."""
        p = self.p
        t = int(p.order[self.step_index])
        rows = np.arange(self.b)
        self.dev_enc[rows, action] += p.enc[t]
        self.dev_pre[rows, action] += p.pre[t]
        self.count[rows, action] += 1
        self.used[rows, action] += p.mem[t]
        self.dim_sum[rows, action] += p.dims[t]
        self.compute[rows, action] = new[rows, action]
        self.ranks[:, t] = action
        cost = self.compute.max(1) + comm_after[rows, action]
        reward = -(cost - self.cost) / p.ref_ms
        self.cost = cost
        self.step_index += 1
        return reward

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.p.order)

    def stuck_error(self, row: int) -> PlacementError:
        p = self.p
        t = p.tables[int(p.order[self.step_index])]
        need = int(p.mem[p.order[self.step_index]])
        used = [int(u) for u in self.used[row]]
        return no_room_error("learned placer", t, need, used, [int(c) for c in p.cap])


# ------------------------------------------------------------------------------ the placer


class LearnedPlacer:
    """The trained actor-critic policy as a Placer.

    samples=0: greedy decoding; samples=K: K sampled placements plus the greedy one, the cheapest
    under the cost network kept. The cost network is the one the policy was trained with.
    """

    def __init__(
        self,
        net: _PolicyNet,
        cost_net: CostNet,
        shape: PolicyShape = PolicyShape(),
        samples: int = 0,
        seed: int = 0,
        optimizer: str = DEFAULT_OPTIMIZER,
        info: dict[str, Any] | None = None,
    ):
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.net, self.cost_net, self.shape = net, cost_net, shape
        self.samples, self.seed, self.optimizer = samples, seed, optimizer
        self.info = dict(info or {})
        # policies saved before the monotone MDP existed were trained on the raw estimate
        self.monotone = bool(self.info.get("ppo", {}).get("monotone", False))
        self.last_estimate_ms: float | None = None
        self.net.eval()
        # numpy copies of both nets' weights for the per-table loop (see _FastPolicy)
        self.policy = _FastPolicy(net, cost_net.shape.width)
        self.heads = cost_net.heads()

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        prep = _prepare(
            tables, topology, self.cost_net, self.heads, self.optimizer, self.monotone
        )
        # row 0: greedy decoding; rows 1..K: samples, in the same batched rollout
        rng = np.random.default_rng(self.seed)
        ranks, cost = _rollout(
            prep, self.policy, self.cost_net, self.heads, 1 + self.samples, rng, greedy_rows=1
        )
        best_ranks, best = ranks[0], float(cost[0])
        if self.samples > 0:
            i = 1 + int(np.argmin(cost[1:]))
            if cost[i] < best:
                best_ranks, best = ranks[i], float(cost[i])
        self.last_estimate_ms = best
        placement = Placement(tuple(int(r) for r in best_ranks), topology.world_size)
        placement.validate(tables, topology, self.optimizer)
        return placement

    def save(self, prefix: Path | str, cost_net_ref: str) -> tuple[Path, Path]:
        info = {
            "format": FORMAT,
            "shape": asdict(self.shape),
            "embed": self.cost_net.shape.width,
            "cost_net": cost_net_ref,
            **self.info,
        }
        return save_model_files(prefix, self.net, info)

    @classmethod
    def load(
        cls,
        prefix: Path | str,
        cost_net: CostNet | None = None,
        samples: int = 0,
        seed: int = 0,
        optimizer: str = DEFAULT_OPTIMIZER,
    ) -> LearnedPlacer:
        """A saved policy; its cost net from the path recorded beside it (relative to the policy
        file) unless one is given."""
        pt, js, info = read_model_info(prefix, "policy", FORMAT)
        missing = [k for k in ("embed", "shape", *(() if cost_net else ("cost_net",))) if k not in info]
        if missing:
            raise ValueError(f"{js}: malformed policy config: missing key(s) {missing}")
        if cost_net is None:
            ref = Path(info["cost_net"])
            cost_net = CostNet.load(ref if ref.is_absolute() else js.parent / ref)
        if cost_net.shape.width != info["embed"]:
            raise ValueError(
                f"{js}: policy expects cost-net encodings of width {info['embed']}, the cost net "
                f"has {cost_net.shape.width}"
            )
        try:
            shape = PolicyShape(**info["shape"])
            net = _PolicyNet(int(info["embed"]), shape)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{js}: malformed policy config 'shape' or 'embed': {err}") from err
        try:
            net.load_state_dict(load_weights(pt))
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ValueError(f"{pt}: weights do not match {js}: {err}") from err
        return cls(net, cost_net, shape, samples, seed, optimizer, info)


def load_shipped(
    device: str = "cpu", samples: int = 0, seed: int = 0, optimizer: str = DEFAULT_OPTIMIZER
) -> LearnedPlacer:
    """The shipped policy for 'cpu' or 'cuda' (trained on the H100 cost net)."""
    if device not in SHIPPED:
        raise ValueError(f"no shipped policy for {device!r}; have {sorted(SHIPPED)}")
    return LearnedPlacer.load(SHIPPED[device], samples=samples, seed=seed, optimizer=optimizer)


class ShippedLearnedPlacer:
    """The shipped policy matching the topology's compute device (cpu or cuda), loaded on first
    use: what make_placer("learned") returns."""

    def __init__(self, samples: int = 0, seed: int = 0, optimizer: str = DEFAULT_OPTIMIZER):
        self.samples, self.seed, self.optimizer = samples, seed, optimizer
        self._loaded: dict[str, LearnedPlacer] = {}

    def policy_for(self, device: str) -> LearnedPlacer:
        """The shipped policy for device ('cpu' or 'cuda'), loaded once; a warning when this
        machine's device of that kind is another model than the one its cost net was measured
        on (hardware.other_hardware_note)."""
        if device not in self._loaded:
            loaded = load_shipped(device, self.samples, self.seed, self.optimizer)
            meta = loaded.cost_net.meta
            note = other_hardware_note(meta.hardware, device) if meta is not None else None
            if note:
                warnings.warn(note, stacklevel=2)
            self._loaded[device] = loaded
        return self._loaded[device]

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        return self.policy_for(topology.compute_device).place(tables, topology)


# ------------------------------------------------------------------------------ rollouts


@dataclass
class _Trajectory:
    """What PPO needs of each step of a batch of episodes (numpy, step by step)."""

    dev_enc: list[np.ndarray]  # [B, D, E]
    table_enc: list[np.ndarray]  # [E]
    dev_feat: list[np.ndarray]  # [B, D, F]
    glob: list[np.ndarray]  # [G]
    mask: list[np.ndarray]  # [B, D]
    action: list[np.ndarray]  # [B]
    logp: list[np.ndarray]  # [B] log-probability of the action under the acting policy
    value: list[np.ndarray]  # [B]
    reward: list[np.ndarray]  # [B]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _rollout(
    prep: _Prepared,
    policy: _FastPolicy,
    cost_net: CostNet,
    heads: HeadEvaluator,
    batch: int,
    rng: np.random.Generator | None = None,
    record: _Trajectory | None = None,
    greedy_rows: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Run `batch` episodes; (ranks [B, T], estimated final cost [B] in ms). The first
    `greedy_rows` rows take the argmax, the others sample (their draws are those a batch of only
    the sampled rows would take), so one batched rollout gives the greedy placement and the
    samples together."""
    env = _Episodes(prep, cost_net, heads, batch)
    rng = rng or np.random.default_rng(0)
    rows = np.arange(batch)
    sampled = rows[greedy_rows:]
    while not env.done:
        obs = env.observe()
        mask = obs["mask"]
        if not mask.any(1).all():
            raise env.stuck_error(int(np.nonzero(~mask.any(1))[0][0]))
        logits, value = policy(
            obs["dev_enc"], obs["table_enc"], obs["dev_feat"], obs["glob"], mask, record is not None
        )
        logp_all = _log_softmax(logits)  # [B, D]: sampling and the recorded logp share it
        action = logits.argmax(-1)
        if len(sampled):
            cum = np.exp(logp_all[sampled]).cumsum(-1)
            u = rng.random((len(sampled), 1)) * cum[:, -1:]
            drawn = np.minimum((cum < u).sum(-1), prep.world - 1)
            action[sampled] = np.where(mask[sampled, drawn], drawn, action[sampled])
        reward = env.step(action, obs["new"], obs["comm_after"])
        if record is not None:
            assert value is not None
            record.dev_enc.append(obs["dev_enc"].astype(np.float32))
            record.table_enc.append(obs["table_enc"].astype(np.float32))
            record.dev_feat.append(obs["dev_feat"].astype(np.float32))
            record.glob.append(obs["glob"].astype(np.float32))
            record.mask.append(mask)
            record.action.append(action)
            record.logp.append(logp_all[rows, action])
            record.value.append(value)
            record.reward.append(reward)
    return env.ranks, env.cost * 1.0


# ------------------------------------------------------------------------------ training


def training_tasks(
    pool: Sequence[TableSpec], cfg: PPOConfig, optimizer: str = DEFAULT_OPTIMIZER
) -> list[tuple[tuple[TableSpec, ...], Topology]]:
    """cfg.num_tasks tasks from the pool: table counts uniform in [min_tables, max_tables], device
    counts from cfg.devices, caps as the task generator sets them (tight, feasible)."""
    rng = np.random.default_rng([cfg.seed, 0xA11])
    hi = min(cfg.max_tables, len(pool))
    out = []
    for i in range(cfg.num_tasks):
        d = int(rng.choice(cfg.devices))
        t = int(rng.integers(min(max(cfg.min_tables, d), hi), hi + 1))
        task = make_task(pool, t, d, seed=cfg.seed * 100_003 + i, slack=cfg.slack, optimizer=optimizer)
        out.append((task.tables, task.topology))
    return out


def training_tasks_from_pools(
    pools: Sequence[Sequence[TableSpec]], cfg: PPOConfig, optimizer: str = DEFAULT_OPTIMIZER
) -> list[tuple[tuple[TableSpec, ...], Topology]]:
    """cfg.num_tasks tasks shared out over several pools (each task from one pool, as a model's
    tables come from one kind of data): pool j gets num_tasks // len(pools) tasks, the first
    num_tasks % len(pools) pools one more, drawn as training_tasks does with its own seed. One pool
    gives exactly training_tasks(pool, cfg)."""
    if not pools:
        raise ValueError("no pools to draw training tasks from")
    if len(pools) == 1:
        return training_tasks(pools[0], cfg, optimizer)
    share, extra = divmod(cfg.num_tasks, len(pools))
    out = []
    for j, pool in enumerate(pools):
        n = share + (1 if j < extra else 0)
        if n:
            out.extend(training_tasks(pool, replace(cfg, num_tasks=n, seed=cfg.seed * 7919 + j + 1), optimizer))
    return out


def train_policy(
    cost_net: CostNet,
    tasks: Sequence[tuple[Sequence[TableSpec], Topology]],
    cfg: PPOConfig = PPOConfig(),
    shape: PolicyShape = PolicyShape(),
    optimizer: str = DEFAULT_OPTIMIZER,
    log: Any = None,
) -> tuple[LearnedPlacer, dict[str, Any]]:
    """PPO on the cost net's MDP over the given tasks. Returns the greedy placer and a history
    (per iteration: mean sampled cost / ref, seconds)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cost_net, tasks, cfg, shape, optimizer, log)
    finally:
        torch.set_num_threads(old_threads)


def _train(
    cost_net: CostNet,
    tasks: Sequence[tuple[Sequence[TableSpec], Topology]],
    cfg: PPOConfig,
    shape: PolicyShape,
    optimizer: str,
    log: Any,
) -> tuple[LearnedPlacer, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    heads = cost_net.heads()
    preps = [_prepare(t, topo, cost_net, heads, optimizer, cfg.monotone) for t, topo in tasks]
    width = cost_net.shape.width
    net = _PolicyNet(width, shape)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history = []
    t0 = time.perf_counter()
    for it in range(cfg.iters):
        prep = preps[int(rng.integers(len(preps)))]
        traj = _Trajectory([], [], [], [], [], [], [], [], [])
        net.eval()
        fast = _FastPolicy(net, width)
        _, cost = _rollout(prep, fast, cost_net, heads, cfg.episodes, rng, traj)
        rewards = np.stack(traj.reward, 1)  # [B, K]
        values = np.stack(traj.value, 1)  # [B, K]
        adv = np.zeros_like(rewards)
        last = np.zeros(cfg.episodes)
        for k in range(rewards.shape[1] - 1, -1, -1):  # GAE, gamma = 1, terminal value 0
            next_v = values[:, k + 1] if k + 1 < rewards.shape[1] else 0.0
            delta = rewards[:, k] + next_v - values[:, k]
            last = delta + cfg.gae_lambda * last
            adv[:, k] = last
        returns = adv + values
        b = cfg.episodes
        flat = {
            "dev_enc": torch.from_numpy(np.concatenate(traj.dev_enc)),
            "table_enc": torch.from_numpy(np.repeat(np.stack(traj.table_enc), b, 0)),
            "dev_feat": torch.from_numpy(np.concatenate(traj.dev_feat)),
            "glob": torch.from_numpy(np.repeat(np.stack(traj.glob), b, 0)),
            "mask": torch.from_numpy(np.concatenate(traj.mask)),
            "action": torch.from_numpy(np.concatenate(traj.action)),
            "logp": torch.from_numpy(np.concatenate(traj.logp).astype(np.float32)),
        }
        # step-major concatenation: row = k * B + b
        adv_t = torch.from_numpy(adv.T.reshape(-1).astype(np.float32))
        ret_t = torch.from_numpy(returns.T.reshape(-1).astype(np.float32))
        adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)
        n = len(adv_t)
        net.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            for chunk in perm.chunk(cfg.minibatches):
                logits, value = net(
                    flat["dev_enc"][chunk],
                    flat["table_enc"][chunk],
                    flat["dev_feat"][chunk],
                    flat["glob"][chunk],
                    flat["mask"][chunk],
                )
                assert value is not None
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(1, flat["action"][chunk][:, None])[:, 0]
                ratio = torch.exp(logp - flat["logp"][chunk])
                a = adv_t[chunk]
                policy_loss = -torch.min(
                    ratio * a, torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * a
                ).mean()
                probs = logp_all.exp()
                legal = flat["mask"][chunk]
                entropy = -(probs * logp_all.masked_fill(~legal, 0.0)).sum(-1).mean()
                value_loss = ((value - ret_t[chunk]) ** 2).mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                opt.step()
        elapsed = time.perf_counter() - t0
        history.append(
            {
                "iter": it,
                "tables": len(prep.tables),
                "devices": prep.world,
                "cost_over_ref": round(float(cost.mean()) / prep.ref_ms, 4),
                "seconds": round(elapsed, 1),
            }
        )
        if log is not None and (it % 20 == 0 or it == cfg.iters - 1):
            recent = history[-20:]
            log(
                f"iter {it:4d}  {elapsed:6.0f} s  sampled cost / ref "
                f"{np.mean([h['cost_over_ref'] for h in recent]):.4f} (last 20 iters)"
            )
        if cfg.max_seconds and elapsed > cfg.max_seconds:
            break
    net.eval()
    info = {
        "ppo": {**asdict(cfg), "devices": list(cfg.devices)},
        "train_seconds": round(time.perf_counter() - t0, 1),
        "iters_done": len(history),
        "history_tail": history[-50:],
    }
    return LearnedPlacer(net, cost_net, shape, optimizer=optimizer, info=info), info


__all__ = [
    "LearnedPlacer",
    "PPOConfig",
    "PolicyShape",
    "ShippedLearnedPlacer",
    "load_shipped",
    "train_policy",
    "training_tasks",
]
