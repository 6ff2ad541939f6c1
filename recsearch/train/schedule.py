"""Learning-rate schedule: linear warmup, then polynomial decay (MLPerf DLRM reference).

multiplier(step) = (step + 1) / warmup_steps                      while step < warmup_steps
                 = 1                                             until decay_start_step
                 = (1 - (step - decay_start) / decay_steps) ** 2  during decay, down to 0
and stays 0 after decay_start_step + decay_steps. decay_steps = 0 disables decay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DECAY_POWER = 2.0


@dataclass(frozen=True)
class LRSchedule:
    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if min(self.warmup_steps, self.decay_start_step, self.decay_steps) < 0:
            raise ValueError("warmup_steps, decay_start_step and decay_steps must be >= 0")
        if self.decay_steps and self.decay_start_step < self.warmup_steps:
            raise ValueError("decay_start_step must not come before the end of warmup")

    def multiplier(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_steps and step >= self.decay_start_step:
            done = min(step - self.decay_start_step, self.decay_steps) / self.decay_steps
            return (1.0 - done) ** DECAY_POWER
        return 1.0


def apply_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], multiplier: float) -> None:
    """Set every param group's lr to its base lr times multiplier (fused TBE optimizers read
    param_groups[0]['lr'] at each step, so this reaches them too)."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * multiplier
