"""Optimizers: fused embedding optimizers (applied in backward) and dense optimizers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam", "lamb")
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


def dense_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=ADAGRAD_EPS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "lamb":
        return Lamb(params, lr=lr)
    raise ValueError(f"dense optimizer must be one of {DENSE_OPTIMIZERS}, got {name!r}")


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020): Adam's update rescaled per tensor by ||w|| / ||update||.

    torch has no LAMB, and torchrec's LAMB is only a marker for the fused embedding kernel.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1 ** state["step"])
                v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                # trust ratio on the device: no host sync per tensor
                w_norm, u_norm = p.norm(), update.norm()
                usable = (w_norm > 0) & (u_norm > 0)
                trust = torch.where(usable, w_norm / u_norm.clamp_min(1e-30), torch.ones_like(w_norm))
                p.sub_(update * (trust * group["lr"]))
        return loss
