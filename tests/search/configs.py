"""The smallest search config over a tiny dataset, shared by the tests that run whole searches:
dim-4 DLRMs whose two MLP widths are searched (2 x 2 configurations), trained in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_search(data: Path, **settings: Any) -> dict[str, Any]:
    """The raw search YAML; `settings` are dotted keys replacing what is here
    (`**{"base.log_every_steps": 4, "fidelity": {"train_rows": [6144]}}`)."""
    raw: dict[str, Any] = {
        "data_dir": str(data),
        "base": {
            "arch": {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1]},
            "hparams": {"batch_size": 256},
            "latency_iters": 2,
            "latency_batch_sizes": [1],
            "log_every_steps": 8,
            "tensorboard": False,
        },
        "space": {
            "embedding_dim": [4], "bottom_depth": [1], "bottom_width": [8, 16], "top_depth": [1],
            "top_width": [8, 16], "interaction": ["dot"], "batch_size": [256],
        },
        "fidelity": {"train_rows": [2048, 6144], "eta": 2},
        "controller": "random",
        "trials": 3,
        "runner": {"kind": "inprocess"},
        "objective": {"serving_batch": 64},
        "heartbeat_s": 0.2,
    }
    return with_settings(raw, settings)


def with_settings(raw: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """raw with each dotted key of settings set (`base.log_every_steps` -> raw["base"]["log_every_steps"])."""
    for key, value in settings.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw
