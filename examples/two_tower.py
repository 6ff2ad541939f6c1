"""A model of your own, trained by recsearch: a two-tower click model built from TorchRec modules.

    recsearch train --config configs/train/quickstart.yaml \
        model=examples.two_tower:two_tower 'model_args={tower: [64, 32], split: 13}'

    torchrun --nproc_per_node 2 -m recsearch.cli train --config configs/train/quickstart.yaml \
        model=examples.two_tower:two_tower 'model_args={tower: [64, 32], split: 13}'

(run from the repository root, or with this directory's parent on PYTHONPATH; the second command
shards its tables over 2 ranks, docs/TRAINING.md "Several ranks"). The factory follows
recsearch.model.factory's contract: it gets the tables (one per categorical feature, on the meta
device) and its decisions, and returns a module that holds one EmbeddingBagCollection built from
those tables and maps a torchrec Batch to (loss, (loss, logits, labels)).

The first `split` categorical features (Criteo: the user side, by convention here) and the dense
features feed the user tower; the rest feed the item tower; the click logit is the dot product of
the two towers' outputs plus a bias. Decisions: `tower` (the MLP widths of each tower, its last
width the dot product's), `split`.
"""

from __future__ import annotations

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP

from recsearch.model.factory import ModelInputs


class TwoTower(torch.nn.Module):
    def __init__(self, inputs: ModelInputs, tower: list[int], split: int):
        super().__init__()
        if not 0 < split < len(inputs.tables):
            raise ValueError(f"split must be in 1..{len(inputs.tables) - 1}, got {split}")
        if not tower:
            raise ValueError("tower must list at least one width")
        self.ebc = EmbeddingBagCollection(tables=inputs.tables, device=inputs.device)
        self.user_features = [f for t in inputs.tables[:split] for f in t.feature_names]
        self.item_features = [f for t in inputs.tables[split:] for f in t.feature_names]
        user_in = sum(t.embedding_dim for t in inputs.tables[:split]) + inputs.dense_in_features
        item_in = sum(t.embedding_dim for t in inputs.tables[split:])
        self.user_tower = _tower(user_in, tower)
        self.item_tower = _tower(item_in, tower)
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch):  # type: ignore[no-untyped-def]
        pooled = self.ebc(batch.sparse_features).to_dict()
        user = torch.cat([batch.dense_features, *(pooled[f] for f in self.user_features)], dim=1)
        item = torch.cat([pooled[f] for f in self.item_features], dim=1)
        logits = (self.user_tower(user) * self.item_tower(item)).sum(dim=1) + self.bias
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())


def _tower(in_features: int, widths: list[int]) -> torch.nn.Module:
    """TorchRec's MLP (linear + ReLU layers) for all widths but the last, then a plain linear
    layer: the tower's output is an embedding, not an activation (a ReLU there can go all zero)."""
    hidden = widths[:-1]
    layers: list[torch.nn.Module] = [MLP(in_features, hidden)] if hidden else []
    layers.append(torch.nn.Linear(hidden[-1] if hidden else in_features, widths[-1]))
    return torch.nn.Sequential(*layers)


def two_tower(inputs: ModelInputs) -> TwoTower:
    """The factory `model: examples.two_tower:two_tower` names."""
    decisions = dict(inputs.decisions)
    tower = decisions.pop("tower", [64, 32])
    split = decisions.pop("split", 13)
    if decisions:
        raise ValueError(f"two_tower: unknown model_args {sorted(decisions)} (it takes tower, split)")
    return TwoTower(inputs, [int(w) for w in tower], int(split))
