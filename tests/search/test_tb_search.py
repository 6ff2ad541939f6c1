"""`tensorboard --logdir <search dir>` after a real search: the HParams tab has one session per
trial (the search's tensorboard/trial_<id>), holding the decisions and the objectives; the trials'
own runs (curves, rungs) add no sessions, and a plain `recsearch train` run keeps a clean entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.context import RequestContext
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import backend_context, metadata

from recsearch.search import loop
from recsearch.search.store import JournalStore
from recsearch.train import trainer
from tests.search.configs import tiny_search
from tests.train.conftest import write_learnable_dataset

RUN_KEYS = {"data_dir", "output_dir", "plan", "device_lock", "latency_iters", "log_every_steps"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tb_data")
    write_learnable_dataset(root)
    return root


def _sessions(logdir: Path) -> tuple[dict[str, dict], set[str], set[str]]:
    """As TensorBoard's hparams plugin serves them: {session run: {hparam: value}}, the hparam
    columns and the metric columns."""
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    context = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider)
    )
    ctx = RequestContext()
    meta = context.hparams_metadata(ctx, "")
    experiment = context.experiment_from_metadata(
        ctx, "", True, meta, context.hparams_from_data_provider(ctx, "", 0)
    )
    sessions = {}
    for run, tags in meta.items():
        if metadata.SESSION_START_INFO_TAG in tags:
            start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
            sessions[run] = {
                k: (v.string_value if v.HasField("string_value") else v.number_value)
                for k, v in start.hparams.items()
            }
    return sessions, {h.name for h in experiment.hparam_infos}, {m.name.tag for m in experiment.metric_infos}


@pytest.mark.slow
def test_a_search_shows_one_clean_hparams_session_per_trial(tmp_path, data):
    raw = tiny_search(data, **{"base.log_every_steps": 4, "base.tensorboard": True})
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "search"
    assert loop.main(["--config", str(config), "--out", str(out)]) == 0

    trial_ids = [r.trial_id for r in JournalStore(out).trials()]
    assert len(trial_ids) == 4  # the reference and three candidates
    assert list(out.glob("trials/*/rung_0/tb/events.*")), "a promoted trial keeps its lower rung's curves"
    assert list(out.glob("trials/*/tb/events.*"))  # the curves are there ...
    assert not list(out.glob("trials/**/hparams"))  # ... but no trainer HParams runs
    sessions, columns, metrics = _sessions(out)
    assert set(sessions) == {f"tensorboard/trial_{i:04d}" for i in trial_ids}
    assert {"trial_id", "kind", "state", "bottom_width", "top_width", "embedding_lr"} <= columns
    assert not columns & RUN_KEYS and not any("." in c for c in columns)
    assert not [(run, k) for run, hp in sessions.items() for k, v in hp.items() if v == "None"]
    assert {"trial/val_auc", "trial/test_auc", "trial/latency_p50_ms", "trial/reward"} <= metrics


def test_a_plain_training_run_has_a_clean_hparams_entry(tmp_path, data):
    raw = {
        "data_dir": str(data), "output_dir": str(tmp_path / "out"),
        "arch": {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1]},
        "hparams": {"batch_size": 256}, "max_steps": 2, "eval_rows": 512, "latency_batch_sizes": [],
    }
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert trainer.main(["--config", str(config)]) == 0
    sessions, columns, metrics = _sessions(tmp_path / "out" / "tb")
    assert set(sessions) == {"hparams"}
    (hparams,) = sessions.values()
    assert hparams["arch.embedding_dim"] == 4 and hparams["hparams.batch_size"] == 256
    assert hparams["max_steps"] == 2
    assert not set(hparams) & RUN_KEYS and "None" not in hparams.values()
    assert {"final/val_auc", "final/test_auc"} <= metrics
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["config"]["tensorboard_hparams"] is True
