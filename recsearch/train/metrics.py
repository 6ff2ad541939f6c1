"""Evaluation metrics: exact AUC, log loss, normalized entropy and accuracy, summed correctly
across ranks.

AUC is exact (every prediction kept, torchmetrics' BinaryAUROC with no thresholds), gathered from
all ranks when a process group with several ranks exists; log loss and accuracy are sums reduced
across ranks, so each rank reports the same numbers. Normalized entropy (NE, what production
recommender teams report: the log loss over the entropy of always predicting the split's click
rate; below 1 means better than that constant) is computed by torchrec.metrics.ne.compute_ne from
the same sums.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torchmetrics.classification import BinaryAUROC
from torchrec.metrics.ne import compute_ne

from recsearch.train.result import SplitMetrics

NE_ETA = 1e-12  # torchrec's clamp for a split whose click rate is 0 or 1


class MetricAccumulator:
    def __init__(self, device: torch.device):
        self.device = device
        self._auroc = BinaryAUROC(thresholds=None).to(device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.float64, device=device)
        self._rows = torch.zeros((), dtype=torch.float64, device=device)
        self._positives = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.detach().reshape(-1).float()
        labels = labels.detach().reshape(-1).float()
        self._auroc.update(torch.sigmoid(logits), labels.long())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        self._loss_sum += loss.double()
        self._correct += ((logits > 0).float() == labels).sum().double()
        self._rows += labels.numel()
        self._positives += labels.sum().double()

    def compute(self) -> SplitMetrics:
        """Metrics over all ranks' data (a collective: every rank must call it)."""
        totals = torch.stack([self._loss_sum, self._correct, self._rows, self._positives])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        loss_sum, correct, rows, positives = (float(x) for x in totals)
        auc = float(self._auroc.compute()) if rows else math.nan  # torchmetrics gathers across ranks
        return SplitMetrics(
            auc=auc,
            log_loss=loss_sum / rows if rows else math.nan,
            accuracy=correct / rows if rows else math.nan,
            rows=int(rows),
            ne=_normalized_entropy(loss_sum, rows, positives),
        )


def _normalized_entropy(loss_sum_nats: float, rows: float, positives: float) -> float:
    """torchrec's NE (its cross entropy is in bits, ours in nats: converted before the ratio)."""
    if not rows:
        return math.nan
    t = torch.tensor
    ne = compute_ne(t(loss_sum_nats / math.log(2), dtype=torch.float64), t(rows, dtype=torch.float64),
                    t(positives, dtype=torch.float64), t(rows - positives, dtype=torch.float64), NE_ETA)
    return float(ne)
