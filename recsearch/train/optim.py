"""Optimizers: fused embedding optimizers (applied in backward) and dense optimizers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recsearch.types import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS  # the names HParams accepts

ADAGRAD_EPS = 1e-8
# FBGEMM's CPU TBE kernels implement only these (exact SGD/Adagrad/row-wise Adagrad); Adam is
# GPU-only and would fail deep inside DistributedModelParallel with an AssertionError.
CPU_EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


def embedding_optimizer(
    name: str, lr: float, device_type: str | None = None
) -> tuple[type[torch.optim.Optimizer], dict[str, float]]:
    """(optimizer class, kwargs) for torchrec's apply_optimizer_in_backward: DMP fuses it into the
    TBE kernels' backward pass (torchrec maps the class to FBGEMM's EmbOptimType: SGD -> EXACT_SGD,
    Adagrad -> EXACT_ADAGRAD, RowWiseAdagrad -> EXACT_ROWWISE_ADAGRAD, Adam -> ADAM). With
    device_type, also checks that FBGEMM has the kernel on that device."""
    if device_type == "cpu" and name == "adam":
        raise ValueError(
            f"embedding optimizer {name!r} needs a GPU: FBGEMM's CPU kernels support "
            f"{', '.join(CPU_EMBEDDING_OPTIMIZERS)}"
        )
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr}
    if name == "adagrad":
        return torch.optim.Adagrad, {"lr": lr, "eps": ADAGRAD_EPS}
    if name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": lr, "eps": ADAGRAD_EPS}
    if name == "adam":
        return torch.optim.Adam, {"lr": lr}
    raise ValueError(f"embedding optimizer must be one of {EMBEDDING_OPTIMIZERS}, got {name!r}")


def dense_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> DenseOptimizer:
    """The dense parameters' optimizer (both engines use it, so they compute the same updates)."""
    if name not in DENSE_OPTIMIZERS:
        raise ValueError(f"dense optimizer must be one of {DENSE_OPTIMIZERS}, got {name!r}")
    return DenseOptimizer(params, kind=name, lr=lr)


class DenseOptimizer(torch.optim.Optimizer):
    """SGD, Adagrad, Adam or LAMB over the dense parameters, written to run inside a CUDA graph.

    Everything `update()` touches lives on the parameters' device: the learning rate is a device
    tensor (`sync_lr()` copies the param group's lr into it, on the host, when it changed), step
    counts are device tensors, and the state exists from construction (nothing is created lazily
    at the first step), so one captured update replays correctly with a new lr each step. The
    updates are multi-tensor (`torch._foreach_*`) ops: a handful of kernels for all parameters,
    no host synchronisation. `step()` = `sync_lr()` + `update()`, as torch.optim callers expect.

    The math is torch.optim's with its defaults (no weight decay, no momentum): SGD p -= lr*g;
    Adagrad (eps 1e-8, no lr decay) sum += g^2, p -= lr*g/(sqrt(sum)+eps); Adam (betas 0.9/0.999,
    eps 1e-8) with bias correction; LAMB (You et al., 2020): Adam's update (eps 1e-6) rescaled per
    tensor by ||w||/||update|| (torch has no LAMB). State is saved in torch's layout ("step",
    "sum", "exp_avg", "exp_avg_sq"), with "step" a device tensor as for torch's capturable Adam.
    """

    BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8
    LAMB_EPS = 1e-6

    def __init__(self, params: Iterable[torch.Tensor], kind: str, lr: float):
        if kind not in DENSE_OPTIMIZERS:
            raise ValueError(f"dense optimizer must be one of {DENSE_OPTIMIZERS}, got {kind!r}")
        super().__init__(list(params), {"lr": lr, "kind": kind, "capturable": True})
        self.kind = kind
        params_ = self._params()
        device = params_[0].device if params_ else torch.device("cpu")
        self._lr = torch.full((), float(lr), device=device)
        self._lr_value = float(lr)
        for p in params_:
            state = self.state[p]
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            if kind == "adagrad":
                state["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif kind in ("adam", "lamb"):
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def sync_lr(self) -> None:
        """Host side, outside any graph: push the param group's lr to the device tensor."""
        lr = float(self.param_groups[0]["lr"])
        if lr != self._lr_value:
            self._lr.fill_(lr)
            self._lr_value = lr

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        loss = closure() if closure is not None else None
        self.sync_lr()
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """One update of every parameter that has a gradient: device work only (graph-safe)."""
        params = [p for p in self._params() if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if self.kind == "sgd":
            torch._foreach_sub_(params, torch._foreach_mul(grads, self._lr))
        elif self.kind == "adagrad":
            sums = [s["sum"] for s in states]
            torch._foreach_addcmul_(sums, grads, grads, value=1.0)
            denom = torch._foreach_sqrt(sums)
            torch._foreach_add_(denom, ADAGRAD_EPS)
            updates = torch._foreach_div(grads, denom)
            torch._foreach_sub_(params, torch._foreach_mul(updates, self._lr))
        else:
            self._adam_family(params, grads, states, steps[0])

    def _adam_family(self, params, grads, states, step: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        beta1, beta2 = self.BETAS
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # every parameter takes every step, so one step count serves all bias corrections
        bias1 = 1 - torch.pow(beta1, step)
        bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.ADAM_EPS if self.kind == "adam" else self.LAMB_EPS)
        updates = torch._foreach_div(exp_avgs, denom)
        if self.kind == "adam":
            torch._foreach_mul_(updates, self._lr / bias1)
        else:  # LAMB: the bias-corrected Adam direction, scaled per tensor by ||w|| / ||update||
            torch._foreach_div_(updates, bias1)
            w_norms = torch._foreach_norm(params)
            u_norms = torch._foreach_norm(updates)
            trust = [
                torch.where((w > 0) & (u > 0), w / u.clamp_min(1e-30), torch.ones_like(w))
                for w, u in zip(w_norms, u_norms, strict=True)
            ]
            torch._foreach_mul_(updates, torch._foreach_mul(trust, self._lr))
        torch._foreach_sub_(params, updates)
