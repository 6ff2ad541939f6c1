"""Evaluation metrics: exact AUC, log loss and accuracy, summed correctly across ranks.

AUC is exact (every prediction kept, torchmetrics' BinaryAUROC with no thresholds), gathered from
all ranks when a process group with several ranks exists; log loss and accuracy are sums reduced
across ranks, so each rank reports the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchmetrics.classification import BinaryAUROC


@dataclass(frozen=True)
class EvalMetrics:
    auc: float
    log_loss: float
    accuracy: float
    rows: int


class MetricAccumulator:
    def __init__(self, device: torch.device):
        self.device = device
        self._auroc = BinaryAUROC(thresholds=None).to(device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.float64, device=device)
        self._rows = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.detach().reshape(-1).float()
        labels = labels.detach().reshape(-1).float()
        self._auroc.update(torch.sigmoid(logits), labels.long())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        self._loss_sum += loss.double()
        self._correct += ((logits > 0).float() == labels).sum().double()
        self._rows += labels.numel()

    def compute(self) -> EvalMetrics:
        """Metrics over all ranks' data (a collective: every rank must call it)."""
        totals = torch.stack([self._loss_sum, self._correct, self._rows])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        loss_sum, correct, rows = (float(x) for x in totals)
        auc = float(self._auroc.compute()) if rows else math.nan  # torchmetrics gathers across ranks
        return EvalMetrics(
            auc=auc,
            log_loss=loss_sum / rows if rows else math.nan,
            accuracy=correct / rows if rows else math.nan,
            rows=int(rows),
        )
