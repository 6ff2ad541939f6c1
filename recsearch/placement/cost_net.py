"""The cost network: a learned `CostModel` of a placement's step cost (DreamShard-style).

`recsearch place cost-net train --samples S.jsonl [...] --out PREFIX [--test-samples T.jsonl]
    [--holdout-tables F --holdout-splits N]`
`recsearch place cost-net eval --model PREFIX --samples T.jsonl`
(command line: recsearch.placement.cli.cost_net)

Shape. One shared MLP encodes each table's feature vector (recsearch.placement.features); a
device's encoding is the *sum* of its tables' encodings (so a device holds any number of tables and
the order of tables does not matter); two heads map a device encoding to the log of its fused
kernel's forward and backward time. A placement's cost is `combine_costs` over its devices: the
slowest device's forward + backward, plus the all-to-all time.

Communication is not a learned head, on purpose: the measured samples are single-device kernels,
which carry no communication signal, and the all-to-all time of table-wise sharding depends only on
the bytes each rank sends and receives (`alltoall_bytes`: batch x dims per rank), which are known
exactly. The calibrated `CommModel` (latency + bytes / bandwidth, fitted on real gloo all-to-alls,
or TorchRec's NVLink bandwidth for CUDA) maps those bytes to time; a head would have to re-learn that
linear function from far less data.

Why log-time heads: costs span three orders of magnitude (one small table to forty large ones); a
squared error on log time is a relative error, which is what the placement target (mean relative
error <= 10%) and the max-over-devices objective care about.

A trained net is a `<prefix>.pt` state_dict (loaded with torch.load(weights_only=True)) and a
`<prefix>.json` with its shape, the hardware and batch its samples were measured at, the
communication model and the held-out errors measured when it was trained.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsearch import remote
from recsearch.placement.features import FEATURE_NAMES, NUM_FEATURES, features_matrix
from recsearch.placement.comm import DEFAULT_COMM, CommModel, comm_costs
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Cost,
    CostSample,
    DeviceCost,
    Placement,
    combine_costs,
)
from recsearch.types import TableSpec, Topology

DATA_DIR = Path(__file__).parent / "data"
SHIPPED = {"cpu": DATA_DIR / "cost_net_cpu", "cuda": DATA_DIR / "cost_net_h100"}
FORMAT = "recsearch.placement.cost_net/2"  # /2: ensembles
ADDITIVE_MODES = ("table", "device")
# a device's fp32 pooled output at which glibc maps its buffer afresh every call
# (CostNetShape.fwd_step_dims)
MMAP_OUTPUT_BYTES = 2**25


def fwd_step_dims_for_batch(batch_size: int) -> int:
    """The sum of dims at which a device's fp32 pooled output (batch x sum(dim) x 4 bytes) reaches
    MMAP_OUTPUT_BYTES: CostNetShape.fwd_step_dims for samples measured at this batch (2048 at
    4096)."""
    return max(1, MMAP_OUTPUT_BYTES // (4 * batch_size))


def step_threshold(step_dims: int) -> float:
    """sum(dim) / step_dims above which the forward step applies: dims are whole numbers, so
    this is sum(dim) >= step_dims, with room for float rounding of the summed encodings."""
    return 1.0 - 0.5 / step_dims


@dataclass(frozen=True)
class CostNetShape:
    """members: an ensemble of that many independently initialised nets, each trained on its own
    random 85% of the samples, whose log-time predictions are averaged. With a few hundred
    samples one net's error on unseen tables is mostly variance; averaging five cut it from 10.7%
    to 9.5% on the H100 unseen-table splits (three splits, 10% of the tables held out).

    additive: where the additive part of a device's cost is made positive (see `_Net`). "table":
    each table's own positive (fwd, bwd) contribution, summed over the device, so a device's
    additive cost is exactly a sum over its tables with no fixed floor. "device" (the first
    version; nets saved without the key): softplus of a linear map of the summed encoding, which
    behaves like exp() below its knee and so is not additive for light devices: on the CPU samples
    it predicted ~6 ms for single tables measured at ~1 ms.

    bound: the interaction correction is exp(bound * tanh(MLP(sum))), i.e. within
    x exp(-bound)..x exp(bound) of the additive part. 0.5 (x0.61..x1.65; nets saved without the
    key) cannot express devices whose fused kernel costs several times the sum of their tables'
    (many tables, several GB of weights) or far less.

    fwd_step_dims: 0 (nets saved without the key): off. N > 0: a device whose tables' dims sum to
    N or more gets a learned forward term proportional to that sum (added to the additive part,
    before the log). Why: on the CPU a device's forward jumps once its pooled output (batch x
    sum(dim) fp32 values) reaches 32 MiB, glibc's largest mmap threshold: from there the output
    buffer is a fresh mmap every call, handed back on free, and its pages fault in again on first
    write, a cost in the output bytes, not in the lookups. Measured (time_device_kernel, one-hot
    tables of 1,000 rows x dim 100, batch 4096, thread clock): forward 5.5 ms at sum(dim) 2000,
    19.7-20.1 ms at 2100; with GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold
    =4294967295 (no mmap, no trimming) 6.3 and 6.0 ms. At batch 4096 that is sum(dim) >= 2048
    (criteo_kaggle/terabyte samples: sum(dim) >= 2048 vs <= 2000 separates the two regimes);
    in general N = 2**25 / (4 * batch). A table passes dim / N to the device sum on an extra
    channel of its encoding (one per member), so the device sum carries sum(dim) / N exactly.

    linear_work: 0 (nets saved without the key, every shipped one): off, a table's positive
    (fwd, bwd) contribution is softplus(linear(encoding)). B > 0 ("table" mode only): it is the
    table's linear work cost times a bounded factor, (sum_k c_k w_k) x exp(B tanh(linear(
    encoding))), with learned c_k >= 0 per member and head over WORK_TERMS (one bag per sample,
    rows gathered, values gathered, values and rows read from rows not in cache, output width),
    each a fixed function of the table's features (no feature changes). Why: a fused lookup's
    cost is close to linear in these counts, but the ReLU encoder extrapolates past the training
    tables' range with whatever slope it happened to learn: held out of training, heavy_multihot
    (pooling up to 300; the other families at most 110) was over-predicted by ~17% on every kind
    of device, fwd and bwd alike (18.9% error), while a non-negative least-squares line in the
    same six counts alone gets 5.9% there (and 7.6-11.1% on the other held-out families). With
    the factor bounded, a table's cost grows with its work along the line fitted on every family,
    and the encoder only says how far (at most x e^+-B) this kind of table sits off it.
    Leave-one-family-out (CPU samples, 2000 epochs, seed 0, held-out sample error, off -> B=2):
    lognormal 9.0 -> 5.4%, criteo_kaggle 8.9 -> 9.1%, criteo_terabyte 9.2 -> 9.2%, avazu 10.4 ->
    9.9%, heavy_multihot 18.9 -> 9.1%, tiny_huge 8.9 -> 9.5%, mixed_dims 14.2 -> 4.8%; the
    random out-of-bag error on the training families fell on all seven folds (e.g. 7.3 -> 6.9%).
    B = 2 over 1 and 0.5 by that out-of-bag error (lower at 2 on every fold tried); tiny_huge is
    the seed-sensitive fold (seed 1: 13.4%, off: 9.0%)."""

    hidden: int = 64
    embed: int = 32  # per member; a table's encoding is the members' encodings side by side
    members: int = 5
    additive: str = "table"
    bound: float = 0.5
    fwd_step_dims: int = 0
    linear_work: float = 0.0

    def __post_init__(self) -> None:
        sizes = {"hidden": self.hidden, "embed": self.embed, "members": self.members}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"cost net shape values must be >= 1, got {bad}")
        if not (self.bound > 0 and math.isfinite(self.bound)):
            raise ValueError(f"cost net interaction bound must be > 0, got {self.bound}")
        if self.additive not in ADDITIVE_MODES:
            raise ValueError(
                f"cost net additive mode {self.additive!r} unknown; known: {ADDITIVE_MODES}"
            )
        if self.fwd_step_dims < 0:
            raise ValueError(f"cost net fwd_step_dims must be >= 0, got {self.fwd_step_dims}")
        if self.fwd_step_dims and self.additive != "table":
            raise ValueError('cost net fwd_step_dims needs additive mode "table"')
        if not (self.linear_work >= 0 and math.isfinite(self.linear_work)):
            raise ValueError(f"cost net linear_work must be >= 0, got {self.linear_work}")
        if self.linear_work and self.additive != "table":
            raise ValueError('cost net linear_work needs additive mode "table"')

    @property
    def member_width(self) -> int:
        """One member's part of a table encoding: its embedding, plus ("table" mode) the table's
        positive (fwd, bwd) additive contributions, plus (fwd_step_dims) dim / fwd_step_dims."""
        extra = (2 if self.additive == "table" else 0) + (1 if self.fwd_step_dims else 0)
        return self.embed + extra

    @property
    def width(self) -> int:
        """Length of a table's (and a device's summed) encoding."""
        return self.member_width * self.members


@dataclass(frozen=True)
class TrainConfig:
    """How fit() trains: full-batch Adam on log time, the best validation state kept."""

    epochs: int = 1500
    lr: float = 3e-3
    # 1e-3 rather than 1e-5: 9.7% vs 10.6% on the H100 unseen-table splits (5 members)
    weight_decay: float = 1e-3
    val_fraction: float = 0.15  # random held-out samples for model selection
    eval_every: int = 25
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class CostNetMeta:
    """What the costs a net predicts are *of*: set by fit() from its samples."""

    batch_size: int
    hardware: str
    device: str
    optimizer: str = DEFAULT_OPTIMIZER
    num_samples: int = 0
    tables_seen: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceSample:
    """One device's tables and its measured kernel times (what the net learns from)."""

    tables: tuple[TableSpec, ...]
    fwd_ms: float
    bwd_ms: float


@dataclass(frozen=True)
class Errors:
    """Mean relative errors |pred - measured| / measured over device samples."""

    fwd: float
    bwd: float
    total: float  # of fwd + bwd
    count: int
    max_total: float = 0.0

    def line(self) -> str:
        return (
            f"MRE fwd {self.fwd:.2%}  bwd {self.bwd:.2%}  fwd+bwd {self.total:.2%} "
            f"(max {self.max_total:.1%}, {self.count} samples)"
        )


# CostNetShape.linear_work: a table's work counts, from its features (recsearch.placement.features),
# in the features' units (a typical heavy table: about 1 each)
WORK_TERMS = ("bag", "rows", "values", "new_values", "new_rows", "width")
_F = {name: FEATURE_NAMES.index(name) for name in
      ("dim", "pooling", "lookup", "new_row_lookup", "distinct_share")}


def work_terms(features: torch.Tensor) -> torch.Tensor:
    """[N, NUM_FEATURES] -> [N, len(WORK_TERMS)]: per sample of the batch, one bag, the rows
    gathered (pooling), the values gathered (dim x pooling), those from rows not yet in cache
    (new_row_lookup), the rows not yet in cache (pooling x distinct_share), the output width
    (dim)."""
    f = features
    rows = f[:, _F["pooling"]]
    return torch.stack(
        [
            torch.ones_like(rows),
            rows,
            f[:, _F["lookup"]],
            f[:, _F["new_row_lookup"]],
            rows * f[:, _F["distinct_share"]],
            f[:, _F["dim"]],
        ],
        -1,
    )


class _Linear(nn.Module):
    """One linear layer per ensemble member, applied to [..., members, in] in one einsum."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...mi,mio->...mo", x, self.weight) + self.bias


class _Net(nn.Module):
    """Encoder -> sum per device -> log(fwd_ms), log(bwd_ms), for each ensemble member; the
    prediction is the members' mean log time (a geometric mean of their times).

    Each head is an additive part, a sum of per-table positive contributions (a fused kernel's
    cost is close to that; CostNetShape.additive says where the positivity is applied), times a
    bounded interaction
    correction exp(0.5 tanh(MLP(sum))) for what fusing tables changes (occupancy, cache sharing,
    launch overhead): on held-out tables this generalized better than an unconstrained MLP head
    (H100 samples, 10% of tables held out: 12.6% vs 14.8% mean relative error, one member).
    The members' layers are stacked (`_Linear`), so the ensemble costs a few einsums, not a loop.
    """

    def __init__(self, shape: CostNetShape):
        super().__init__()
        m, h, e = shape.members, shape.hidden, shape.embed
        self.members, self.embed = m, e
        self.bound = float(shape.bound)
        self.step_dims = int(shape.fwd_step_dims)
        self.per_table = shape.additive == "table"
        self.member_width = shape.member_width
        self.encoder = nn.Sequential(
            _Linear(m, NUM_FEATURES, h), nn.ReLU(), _Linear(m, h, h), nn.ReLU(), _Linear(m, h, e)
        )
        self.additive = _Linear(m, e, 2)  # "table": per table, before the sum; else per device
        self.fwd_head = nn.Sequential(_Linear(m, e, h), nn.ReLU(), _Linear(m, h, 1))
        self.bwd_head = nn.Sequential(_Linear(m, e, h), nn.ReLU(), _Linear(m, h, 1))
        # per member log-ms offset (mean of its training targets): the heads start near the data
        self.register_buffer("log_offset", torch.zeros(m, 2))
        self.linear_work = float(shape.linear_work)
        if self.linear_work:
            # per member, work term and head: log of the cost per unit of work (additive-part
            # units), starting at e^-4 (a typical table ~0.02 per term, a device of ~20 tables ~2)
            self.work_log = nn.Parameter(torch.full((m, len(WORK_TERMS), 2), -4.0))
        if self.step_dims:
            # per member log of the forward cost (in the additive part's units, ~exp(log_offset)
            # ms) per fwd_step_dims of output width. A log, starting at 1 unit: the CPU samples
            # want ~13 ms at 2048 dims, which a softplus starting small did not reach in 600
            # epochs of Adam at lr 3e-3
            self.step_log = nn.Parameter(torch.zeros(m))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """[N, NUM_FEATURES] -> [N, members * member_width]."""
        x = features[:, None, :].expand(-1, self.members, -1)
        enc = self.encoder(x)
        if self.per_table:
            if self.linear_work:
                work = torch.einsum("nk,mkh->nmh", work_terms(features), torch.exp(self.work_log))
                contrib = work * torch.exp(self.linear_work * torch.tanh(self.additive(enc)))
            else:
                contrib = nn.functional.softplus(self.additive(enc))
            enc = torch.cat([enc, contrib], -1)
        if self.step_dims:
            # dim / N, exact in float32 (dim / 256 is the "dim" feature)
            width = features[:, FEATURE_NAMES.index("dim")] * (256.0 / self.step_dims)
            enc = torch.cat([enc, width[:, None, None].expand(-1, self.members, 1)], -1)
        return enc.flatten(-2)

    def member_log_ms(self, device_encoding: torch.Tensor) -> torch.Tensor:
        """[..., members * member_width] -> [..., members, 2] each member's log(fwd_ms),
        log(bwd_ms)."""
        x = device_encoding.unflatten(-1, (self.members, self.member_width))
        if self.per_table:
            summed = x[..., self.embed : self.embed + 2]
            if self.step_dims:
                width = x[..., -1:]  # sum(dim) / N
                over = (width > step_threshold(self.step_dims)).to(width.dtype)
                step = torch.exp(self.step_log)[:, None] * width * over
                summed = summed + torch.cat([step, torch.zeros_like(step)], -1)
            x = x[..., : self.embed]
            additive = torch.log(summed + 1e-4)
        else:
            additive = torch.log(nn.functional.softplus(self.additive(x)) + 1e-4)
        corr = torch.cat([self.fwd_head(x), self.bwd_head(x)], dim=-1)
        return additive + self.bound * torch.tanh(corr) + self.log_offset

    def log_ms(self, device_encoding: torch.Tensor) -> torch.Tensor:
        """[..., members * member_width] -> [..., 2] the ensemble's log(fwd_ms), log(bwd_ms)."""
        return self.member_log_ms(device_encoding).mean(-2)


class HeadEvaluator:
    """A numpy copy of a trained net's heads: device encodings -> predicted (fwd_ms, bwd_ms).

    Why: the placer asks for the cost of every device with the next table added at every step
    (200 steps for 200 tables); on arrays this small torch's per-call overhead is most of the
    time. The heads' first layers are linear in the device encoding, which is a sum over tables,
    so a placer can keep each device's first-layer pre-activations (`pre`) and add a table's:
    a step then needs no matrix product at all (`ms_from_pre`). Same arithmetic as
    `_Net.log_ms` in float64; a test holds the two equal. Copy again after the weights change.
    """

    def __init__(self, net: _Net):
        sd = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
        self.members, self.embed, self.width = net.members, net.embed, net.member_width
        self.per_table = net.per_table
        self.bound = net.bound
        self.step_dims = net.step_dims
        m, e = self.members, self.embed
        if self.per_table:
            # the summed per-table contributions pass through as they are (identity, no bias)
            add_w = np.zeros((m, self.width, 2))
            add_w[:, e : e + 2, :] = np.eye(2)
            add_b = np.zeros((m, 2))
        else:
            add_w, add_b = sd["additive.weight"], sd["additive.bias"]
        # the first layers of the heads (zero rows for the contribution channels) beside the
        # additive part: [M, W, 2 + 2h]
        heads_w = np.concatenate([sd["fwd_head.0.weight"], sd["bwd_head.0.weight"]], -1)
        heads_w = np.concatenate([heads_w, np.zeros((m, self.width - e, heads_w.shape[-1]))], 1)
        parts_w, parts_b = [add_w, heads_w], [add_b, sd["fwd_head.0.bias"], sd["bwd_head.0.bias"]]
        if self.step_dims:
            # the summed sum(dim) / N channel (the encoding's last) passes through as the last
            step_w = np.zeros((m, self.width, 1))
            step_w[:, -1, 0] = 1.0
            parts_w.append(step_w)
            parts_b.append(np.zeros((m, 1)))
            self.step_scale = np.exp(sd["step_log"])[:, None]  # [M, 1]
        self.w1 = np.concatenate(parts_w, -1)
        self.b1 = np.concatenate(parts_b, -1)
        self.hidden = sd["fwd_head.0.weight"].shape[-1]
        self.wf, self.bf = sd["fwd_head.2.weight"][..., 0], sd["fwd_head.2.bias"]  # [M, h], [M, 1]
        self.wb, self.bb = sd["bwd_head.2.weight"][..., 0], sd["bwd_head.2.bias"]
        self.offset = sd["log_offset"]  # [M, 2]

    @property
    def pre_width(self) -> int:
        return 2 + 2 * self.hidden + (1 if self.step_dims else 0)

    def pre(self, encoding: np.ndarray) -> np.ndarray:
        """[..., members * member_width] -> [..., members, 2 + 2 hidden] first-layer products (no
        bias): additive in the encoding, so a device's is the sum of its tables'."""
        lead = encoding.shape[:-1]
        x = encoding.reshape(-1, self.members, self.width).transpose(1, 0, 2)  # [M, N, W]
        return (x @ self.w1).transpose(1, 0, 2).reshape(*lead, self.members, self.pre_width)

    def ms_from_pre(self, pre: np.ndarray) -> np.ndarray:
        """[..., members, pre_width] summed pre-activations -> [..., 2] (fwd_ms, bwd_ms)."""
        z = pre + self.b1
        h = self.hidden
        if self.per_table:
            summed = np.maximum(z[..., :2], 0.0)
            if self.step_dims:
                width = z[..., -1:]
                over = width > step_threshold(self.step_dims)
                step = np.where(over, self.step_scale * width, 0.0)
                summed = summed + np.concatenate([step, np.zeros_like(step)], -1)
            additive = np.log(summed + 1e-4)
        else:
            additive = np.log(np.logaddexp(0.0, z[..., :2]) + 1e-4)
        fwd = (np.maximum(z[..., 2 : 2 + h], 0.0) * self.wf).sum(-1, keepdims=True) + self.bf
        bwd_hidden = np.maximum(z[..., 2 + h : 2 + 2 * h], 0.0)
        bwd = (bwd_hidden * self.wb).sum(-1, keepdims=True) + self.bb
        log = additive + self.bound * np.tanh(np.concatenate([fwd, bwd], -1)) + self.offset
        return np.exp(log.mean(-2))

    def ms(self, device_encoding: np.ndarray) -> np.ndarray:
        """[..., members * member_width] -> [..., 2] predicted (fwd_ms, bwd_ms)."""
        return self.ms_from_pre(self.pre(device_encoding))


def device_samples(samples: Iterable[CostSample]) -> list[DeviceSample]:
    """Single-device samples as they are; placement samples split into one per non-empty device
    (their per_device costs)."""
    out = []
    for s in samples:
        if s.placement is None:
            out.append(DeviceSample(tuple(s.tables), s.cost.fwd_ms, s.cost.bwd_ms))
            continue
        if s.placement.replicated:
            raise ValueError(
                "placement samples with replicated tables cannot train the cost net: each "
                "device's time includes the replicated tables' kernel at another batch"
            )
        if len(s.cost.per_device) != s.placement.world_size:
            raise ValueError(
                f"placement sample with {s.placement.world_size} ranks has "
                f"{len(s.cost.per_device)} per-device costs"
            )
        for group, d in zip(s.placement.groups(), s.cost.per_device):
            if group:
                out.append(DeviceSample(tuple(s.tables[i] for i in group), d.fwd_ms, d.bwd_ms))
    bad = [i for i, d in enumerate(out) if not d.tables or d.fwd_ms <= 0 or d.bwd_ms <= 0]
    if bad:
        raise ValueError(f"device samples without tables or with non-positive times: {bad[:10]}")
    return out


def _pack_unique(
    samples: Sequence[DeviceSample],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features of each distinct table, the distinct-table index of every table of every sample,
    the sample index of each of those): training encodes each distinct table once per epoch and
    gathers, instead of encoding every occurrence (the same sums, several times faster)."""
    index: dict[str, int] = {}
    rows, which, seg = [], [], []
    for i, s in enumerate(samples):
        for t in s.tables:
            key = repr(t)
            if key not in index:
                index[key] = len(rows)
                rows.append(features_matrix([t])[0])
            which.append(index[key])
            seg.append(i)
    return (
        torch.from_numpy(np.stack(rows)),
        torch.tensor(which, dtype=torch.long),
        torch.tensor(seg, dtype=torch.long),
    )


def _targets(samples: Sequence[DeviceSample]) -> torch.Tensor:
    return torch.tensor([[s.fwd_ms, s.bwd_ms] for s in samples], dtype=torch.float32)


def errors_of(pred_ms: np.ndarray, true_ms: np.ndarray) -> Errors:
    """pred/true: [N, 2] (fwd, bwd) ms."""
    rel = np.abs(pred_ms - true_ms) / true_ms
    tot = np.abs(pred_ms.sum(1) - true_ms.sum(1)) / true_ms.sum(1)
    return Errors(
        float(rel[:, 0].mean()),
        float(rel[:, 1].mean()),
        float(tot.mean()),
        len(true_ms),
        float(tot.max()) if len(tot) else 0.0,
    )


class CostNet:
    """A learned CostModel: per-table encoder, sum per device, fwd/bwd heads, max over devices,
    plus the calibrated communication model.

    Until fit() (or load()) it has no meta and cannot predict.
    """

    def __init__(
        self,
        shape: CostNetShape = CostNetShape(),
        train: TrainConfig = TrainConfig(),
        comm: CommModel | None = None,
    ):
        self.shape = shape
        self.train_config = train
        self.comm = comm
        self.meta: CostNetMeta | None = None
        self.metrics: dict[str, Any] = {}
        self.net = _Net(shape)
        self.net.eval()

    # ---------------------------------------------------------------- prediction

    def _require_meta(self) -> CostNetMeta:
        if self.meta is None:
            raise RuntimeError("cost net is not trained: call fit() or CostNet.load()")
        return self.meta

    @property
    def comm_model(self) -> CommModel:
        meta = self._require_meta()
        return self.comm or DEFAULT_COMM["cuda" if meta.device == "cuda" else "cpu"]

    @torch.no_grad()
    def encode_tables(self, tables: Sequence[TableSpec]) -> torch.Tensor:
        """[T, width] encodings of the tables (what a device sums)."""
        return self.net.encode(torch.from_numpy(features_matrix(tables)))

    def heads(self) -> HeadEvaluator:
        """A numpy evaluator of the current weights' heads (for the placer's inner loop)."""
        self._require_meta()
        return HeadEvaluator(self.net)

    @torch.no_grad()
    def device_ms(self, device_encoding: torch.Tensor) -> torch.Tensor:
        """[..., width] summed encodings -> [..., 2] predicted (fwd_ms, bwd_ms). A device with no
        tables costs 0: callers pass `empty` masks where that applies (see device_costs)."""
        return torch.exp(self.net.log_ms(device_encoding))

    def device_costs(
        self, tables: Sequence[TableSpec], groups: Sequence[Sequence[int]]
    ) -> list[tuple[float, float]]:
        """(fwd_ms, bwd_ms) per group of table indices; (0, 0) for an empty group."""
        self._require_meta()
        enc = self.encode_tables(tables)
        out = []
        for g in groups:
            if not g:
                out.append((0.0, 0.0))
                continue
            ms = self.device_ms(enc[list(g)].sum(0))
            out.append((float(ms[0]), float(ms[1])))
        return out

    def predict(
        self,
        tables: Sequence[TableSpec],
        placement: Placement,
        topology: Topology | None = None,
        batch_size: int | None = None,
    ) -> Cost:
        """The step cost of a placement at the net's own batch (batch_size None), or at another
        global batch: each device's compute scaled by batch_size over the net's batch (kernel
        work is linear in the samples looked up) and the communication priced at batch_size
        (the replicas' gradient all-reduce moves the same bytes whatever the batch)."""
        meta = self._require_meta()
        batch = batch_size or meta.batch_size
        if topology is not None and topology.world_size != placement.world_size:
            raise ValueError(
                f"placement is for {placement.world_size} ranks, topology has "
                f"{topology.world_size}"
            )
        compute = self.device_costs(tables, placement.groups())
        if placement.replicated:
            # every rank runs the replicated tables' kernel for its own batch / world samples;
            # the net knows kernels at its samples' global batch only, so that kernel is taken
            # as its estimate there over world (work linear in the samples looked up). With
            # fwd_step_dims this charges the forward step from sum(dim) >= N where at batch /
            # world it starts at world x N: an overestimate for wide replica sets, which only
            # makes replication look dearer than it is (no shipped net has the step)
            (rep_f, rep_b), = self.device_costs(tables, [placement.replicated])
            share = 1.0 / placement.world_size
            compute = [(f + rep_f * share, b + rep_b * share) for f, b in compute]
        if batch != meta.batch_size:
            scale = batch / meta.batch_size
            compute = [(f * scale, b * scale) for f, b in compute]
        comms = comm_costs(placement, tables, batch, self.comm_model)
        return combine_costs([DeviceCost(f, b, c) for (f, b), c in zip(compute, comms)])

    # ---------------------------------------------------------------- training

    def fit(self, samples: Iterable[CostSample]) -> None:
        """Train from scratch on measured samples (all of one hardware and batch size)."""
        samples = list(samples)
        if not samples:
            raise ValueError("cost net: no samples to fit")
        self.meta = _meta_of(samples)
        self.metrics = self.fit_devices(device_samples(samples))

    def fit_devices(self, data: Sequence[DeviceSample]) -> dict[str, Any]:
        """Train on device samples; the best state on a random validation split is kept.
        Returns the training metrics (validation errors, epochs, seconds)."""
        cfg = self.train_config
        old_threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            return self._fit(data, cfg)
        finally:
            torch.set_num_threads(old_threads)

    def _fit(self, data: Sequence[DeviceSample], cfg: TrainConfig) -> dict[str, Any]:
        """Full-batch Adam on the squared log-time error. Member m holds out its own random
        val_fraction of the samples (seed cfg.seed + 1000 m); the state kept is the epoch with the
        lowest out-of-bag error: each held-out sample predicted by the members that did not
        train on it. With one member this is a plain random validation split."""
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        members = self.shape.members
        n = len(data)
        n_val = int(round(n * cfg.val_fraction)) if n >= 10 else 0
        held = np.zeros((n, members), dtype=bool)
        for m in range(members):
            held[np.random.default_rng(cfg.seed + 1000 * m).permutation(n)[:n_val], m] = True
        x, which, seg = _pack_unique(data)
        y = torch.log(_targets(data))
        in_bag = torch.from_numpy(~held).float()  # [N, members]
        self.net = _Net(self.shape)
        with torch.no_grad():
            for m in range(members):
                self.net.log_offset[m] = y[in_bag[:, m] > 0].mean(0)
        oob = held.any(1)
        decayed = [p for n_, p in self.net.named_parameters() if n_ != "work_log"]
        groups: list[dict[str, Any]] = [{"params": decayed}]
        if self.shape.linear_work:
            # a log-scale coefficient: weight decay would pull it to 1 unit, not to 0
            groups.append({"params": [self.net.work_log], "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs, eta_min=cfg.lr * 0.02)
        best = (math.inf, 0, {k: v.clone() for k, v in self.net.state_dict().items()})
        self.net.train()
        for epoch in range(1, cfg.epochs + 1):
            dev = self._device_sums(x, which, seg, n)
            sq = ((self.net.member_log_ms(dev) - y[:, None, :]) ** 2).sum(-1)  # [N, members]
            loss = ((sq * in_bag).sum(0) / in_bag.sum(0)).sum() / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if oob.any() and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                err = self._oob_errors(x, which, seg, data, held).total
                if err < best[0]:
                    best = (err, epoch, {k: v.clone() for k, v in self.net.state_dict().items()})
        if oob.any():
            self.net.load_state_dict(best[2])
        self.net.eval()
        metrics: dict[str, Any] = {
            "samples": n,
            "members": members,
            "train_samples": n - n_val,  # per member
            "val_samples": int(oob.sum()),
            "epochs": cfg.epochs,
            "best_epoch": best[1] if oob.any() else cfg.epochs,
            "fit_seconds": round(time.perf_counter() - t0, 2),
            "train": asdict(self.evaluate_devices(data)),
        }
        if oob.any():
            metrics["val"] = asdict(self._oob_errors(x, which, seg, data, held))
        return metrics

    @torch.no_grad()
    def _oob_errors(
        self,
        x: torch.Tensor,
        which: torch.Tensor,
        seg: torch.Tensor,
        data: Sequence[DeviceSample],
        held: np.ndarray,
    ) -> Errors:
        """Errors on the samples some member held out, each predicted by those members only
        (x, which, seg: `_pack_unique`)."""
        was = self.net.training
        self.net.eval()
        dev = self._device_sums(x, which, seg, len(data))
        logs = self.net.member_log_ms(dev).numpy()  # [N, members, 2]
        self.net.train(was)
        rows = np.nonzero(held.any(1))[0]
        w = held[rows][:, :, None]
        pred = np.exp((logs[rows] * w).sum(1) / w.sum(1))
        return errors_of(pred, _targets([data[i] for i in rows]).numpy())

    def _device_sums(
        self, x: torch.Tensor, which: torch.Tensor, seg: torch.Tensor, n: int
    ) -> torch.Tensor:
        """[n, width] each device sample's summed table encodings (x, which, seg: `_pack_unique`):
        every distinct table encoded once, then gathered and summed per sample."""
        enc = self.net.encode(x)[which]
        return torch.zeros(n, enc.shape[1]).index_add_(0, seg, enc)

    @torch.no_grad()
    def predict_devices(self, data: Sequence[DeviceSample]) -> np.ndarray:
        """[N, 2] predicted (fwd_ms, bwd_ms) of each device sample."""
        was = self.net.training
        self.net.eval()
        dev = self._device_sums(*_pack_unique(data), len(data))
        out = torch.exp(self.net.log_ms(dev)).numpy()
        self.net.train(was)
        return out

    def evaluate_devices(self, data: Sequence[DeviceSample]) -> Errors:
        if not data:
            return Errors(math.nan, math.nan, math.nan, 0)
        return errors_of(self.predict_devices(data), _targets(data).numpy())

    def evaluate(self, samples: Iterable[CostSample]) -> Errors:
        """Mean relative errors on measured samples; they must match the net's hardware/batch."""
        samples = list(samples)
        self.check_compatible(samples)
        return self.evaluate_devices(device_samples(samples))

    def check_compatible(self, samples: Sequence[CostSample]) -> None:
        meta = self._require_meta()
        batches = sorted({s.batch_size for s in samples})
        if batches and batches != [meta.batch_size]:
            raise ValueError(
                f"samples are at batch sizes {batches}; this cost net predicts batch "
                f"{meta.batch_size}"
            )
        hw = sorted({_hardware_key(s.hardware) for s in samples})
        if hw and hw != [_hardware_key(meta.hardware)]:
            raise ValueError(
                f"samples were measured on {hw}; this cost net is for "
                f"{_hardware_key(meta.hardware)!r}"
            )

    # ---------------------------------------------------------------- files

    def save(self, prefix: Path | str) -> tuple[Path, Path]:
        """Write <prefix>.pt (state_dict) and <prefix>.json (shape, meta, comm, metrics)."""
        meta = self._require_meta()
        info = {
            "format": FORMAT,
            "features": list(FEATURE_NAMES),
            "shape": asdict(self.shape),
            "train": asdict(self.train_config),
            "meta": {**asdict(meta), "tables_seen": list(meta.tables_seen)},
            "comm": asdict(self.comm_model),
            "metrics": self.metrics,
        }
        return save_model_files(prefix, self.net, info)

    @classmethod
    def load(cls, prefix: Path | str) -> CostNet:
        pt, js, info = read_model_info(prefix, "cost net", FORMAT)
        if list(info.get("features", ())) != list(FEATURE_NAMES):
            raise ValueError(
                f"{js}: trained on features {info.get('features')}, this version computes "
                f"{list(FEATURE_NAMES)}: retrain it"
            )
        try:
            # nets saved before the additive mode existed are "device" ones
            shape = CostNetShape(**{"additive": "device", **info["shape"]})
            train = TrainConfig(**info.get("train", {}))
            raw_meta = info["meta"]
            meta = CostNetMeta(**{**raw_meta, "tables_seen": tuple(raw_meta["tables_seen"])})
            c = info["comm"]
            comm = CommModel(
                float(c["latency_ms"]),
                float(c["bytes_per_ms"]),
                c.get("hardware", ""),
                c.get("source", ""),
                tuple(tuple(p) for p in c.get("points", ())),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{js}: malformed cost net config: {err}") from err
        model = cls(shape, train, comm)
        state = load_weights(pt)
        try:
            model.net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ValueError(f"{pt}: weights do not match the shape in {js}: {err}") from err
        model.net.eval()
        model.meta = meta
        model.metrics = dict(info.get("metrics", {}))
        return model


def load_weights(pt: Path) -> dict[str, torch.Tensor]:
    """The state dict saved in pt (torch.save of a state dict); ValueError naming the file when it
    is not one (truncated, corrupt, or something else pickled)."""
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    # garbage makes torch's weights-only unpickler raise about anything (UnpicklingError,
    # RuntimeError, EOFError, IndexError from its stack, ...): all mean "not a weights file"
    except Exception as err:  # noqa: BLE001 - re-raised as a ValueError naming the file
        raise ValueError(
            f"{pt}: not a readable weights file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{pt}: holds a {type(state).__name__}, not a state dict of weights")
    return state


def model_paths(prefix: Path | str) -> tuple[Path, Path]:
    """(<prefix>.pt, <prefix>.json): a saved model's weights and its JSON description. A prefix
    given with either suffix names the same pair."""
    p = Path(prefix)
    if p.suffix in (".pt", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".pt"), p.with_name(p.name + ".json")


def read_model_info(prefix: Path | str, what: str, fmt: str) -> tuple[Path, Path, dict[str, Any]]:
    """(<prefix>.pt, <prefix>.json, the JSON) of a model saved by save_model_files, after checking
    both files exist and the JSON is valid and of format fmt; `what` names the model in errors."""
    pt, js = model_paths(prefix)
    for p in (pt, js):
        if not p.exists():
            raise FileNotFoundError(f"{what} file {p} does not exist")
    try:
        info = json.loads(js.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{js}: not valid JSON: {err}") from err
    if not isinstance(info, dict):
        raise ValueError(f"{js}: holds a JSON {type(info).__name__}, not a {what} description")
    if info.get("format") != fmt:
        raise ValueError(
            f"{js}: format is {info.get('format')!r}, this version reads {fmt!r}: retrain it"
        )
    return pt, js, info


def save_model_files(prefix: Path | str, net: nn.Module, info: dict[str, Any]) -> tuple[Path, Path]:
    """Write net's state_dict to <prefix>.pt and info to <prefix>.json, each atomically
    (remote.write_bytes), weights first; the cost net's and the policy's file format."""
    pt, js = model_paths(prefix)
    weights = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, weights)
    remote.write_bytes(pt, weights.getvalue())
    remote.write_text(js, json.dumps(info, indent=1) + "\n")
    return pt, js


def _hardware_key(hardware: str) -> str:
    """The comparable part of a hardware string: device, model name, threads and the CPU clock
    (not library versions, which do not change what a kernel costs much and differ between
    machines)."""
    parts = hardware.split("|")
    keep = [parts[0]] + [p for p in parts[1:] if p.startswith(("threads=", "clock="))]
    return "|".join(keep)


def _meta_of(samples: Sequence[CostSample]) -> CostNetMeta:
    batches = sorted({s.batch_size for s in samples})
    if len(batches) != 1:
        raise ValueError(f"samples mix batch sizes {batches}: fit one cost net per batch size")
    hardware = sorted({_hardware_key(s.hardware) for s in samples})
    if len(hardware) != 1:
        raise ValueError(f"samples mix hardware {hardware}: fit one cost net per hardware")
    devices = sorted({s.device for s in samples})
    optimizers = sorted({s.optimizer for s in samples})
    if len(optimizers) != 1:
        raise ValueError(f"samples mix embedding optimizers {optimizers}")
    return CostNetMeta(
        batch_size=batches[0],
        hardware=samples[0].hardware,
        device=devices[0],
        optimizer=optimizers[0],
        num_samples=len(samples),
        tables_seen=tuple(sorted({t.name for s in samples for t in s.tables})),
    )


# ------------------------------------------------------------------------------ held-out splits


def split_by_tables(
    samples: Sequence[CostSample], holdout_fraction: float, seed: int = 0
) -> tuple[list[CostSample], list[CostSample], list[str]]:
    """Hold out a random share of the tables: (samples without any held-out table, samples with at
    least one, the held-out table names). The second set are placements of tables the net never
    saw, the way an unseen test pool is, from a single measured pool."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    names = sorted({t.name for s in samples for t in s.tables})
    rng = np.random.default_rng([seed, 0x40])
    held = set(rng.choice(names, max(1, round(len(names) * holdout_fraction)), replace=False))
    seen = [s for s in samples if not any(t.name in held for t in s.tables)]
    unseen = [s for s in samples if any(t.name in held for t in s.tables)]
    return seen, unseen, sorted(held)


def load_shipped(device: str = "cpu") -> CostNet:
    """The cost net shipped in recsearch/placement/data for 'cpu' or 'cuda' (H100)."""
    if device not in SHIPPED:
        raise ValueError(f"no shipped cost net for {device!r}; have {sorted(SHIPPED)}")
    return CostNet.load(SHIPPED[device])


__all__ = [
    "CostNet",
    "CostNetMeta",
    "CostNetShape",
    "DeviceSample",
    "Errors",
    "TrainConfig",
    "device_samples",
    "load_shipped",
    "split_by_tables",
]
