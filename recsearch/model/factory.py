"""A user's own TorchRec model, trained (and placed) by recsearch like its built-in DLRMs.

The train config's `model` key names a factory, `package.module:function`, and `model_args` the
decisions it takes (an architecture's knobs: tower widths, depths, ...). The trainer calls it as

    factory(ModelInputs(tables=..., dense_in_features=13, decisions=model_args, device=meta))

and expects back a torch.nn.Module that

- holds exactly one torchrec EmbeddingBagCollection, built from `tables` (one table per
  categorical feature, the names the data's features have) on `inputs.device`: the trainer
  shards it over ranks (DistributedModelParallel), or on one device swaps it for FBGEMM's fused
  collection; the rest of the model is built on the CPU as usual and moved by the trainer;
- takes a torchrec `Batch` (dense_features, sparse_features: a KeyedJaggedTensor, labels) and
  returns `(loss, (loss.detach(), logits.detach(), labels.detach()))`, TorchRec's DLRMTrain
  convention, with one logit per row (binary click labels).

The built-in DLRMs (torchrec's DLRM, DLRM_DCN and DLRM_Projection, `model: null`) come through the
same contract: `dlrm(inputs)` below. The engines' extras for them (bf16 autocast, the gather dot
interaction, torch.compile of the dense parts) are theirs; a user model does such things itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

BUILTIN = "recsearch.model.dlrm:dlrm"


@dataclass(frozen=True)
class ModelInputs:
    """What a model factory is given."""

    tables: list[EmbeddingBagConfig]  # one per categorical feature, in feature order
    dense_in_features: int  # dense features per row (13 on Criteo)
    decisions: dict[str, Any] = field(default_factory=dict)  # the config's model_args
    device: torch.device = field(default_factory=lambda: torch.device("meta"))  # where the tables go


ModelFactory = Callable[[ModelInputs], torch.nn.Module]


class ModelFactoryError(ValueError):
    """The `model` key names nothing usable, or what it built breaks the contract."""


def load_factory(path: str) -> ModelFactory:
    """The callable `package.module:function` names (imported now; errors say what is wrong)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ModelFactoryError(f"model: {path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelFactoryError(f"model: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelFactoryError(f"model: {module_name} has no function {attr!r}")
    return factory


def the_embedding_bag_collection(model: torch.nn.Module) -> tuple[str, EmbeddingBagCollection]:
    """(its attribute path, the module): the model's one EmbeddingBagCollection."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if len(found) != 1:
        raise ModelFactoryError(
            f"the model must hold exactly one torchrec EmbeddingBagCollection (built from ModelInputs.tables); "
            f"it holds {len(found)}{': ' + ', '.join(n for n, _ in found) if found else ''}"
        )
    return found[0]


def check_tables(ebc: EmbeddingBagCollection, tables: list[EmbeddingBagConfig]) -> None:
    """The collection's tables are the ones the factory was given (names, rows, dims, features)."""
    def key(c: EmbeddingBagConfig) -> tuple:
        return c.name, c.num_embeddings, c.embedding_dim, tuple(c.feature_names)

    got, want = [key(c) for c in ebc.embedding_bag_configs()], [key(c) for c in tables]
    if got != want:
        extra = sorted(set(got) - set(want))[:3]
        missing = sorted(set(want) - set(got))[:3]
        raise ModelFactoryError(
            "the model's EmbeddingBagCollection must be built from ModelInputs.tables, as given "
            f"(unexpected: {extra or 'none'}; missing: {missing or 'none'})"
        )


def replace_module(model: torch.nn.Module, path: str, new: torch.nn.Module) -> None:
    """Put `new` where the submodule at `path` (a dotted name) is."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def build_user_model(path: str, inputs: ModelInputs) -> tuple[torch.nn.Module, str]:
    """The factory's model, checked against the contract; and its collection's attribute path."""
    model = load_factory(path)(inputs)
    if not isinstance(model, torch.nn.Module):
        raise ModelFactoryError(f"model: {path} returned {type(model).__name__}, not a torch.nn.Module")
    ebc_path, ebc = the_embedding_bag_collection(model)
    check_tables(ebc, inputs.tables)
    return model, ebc_path
