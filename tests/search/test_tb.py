from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from recsearch.search import tb
from recsearch.types import TrialResult, TrialState
from tests.conftest import write_dataset
from tests.search.fake_search import FakeSearch, choices


def _read(run_dir: Path):
    """(hparams, {metric: value}, session-end status) of one HParams run, read back from its events."""
    files = list(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    hparams = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in start.hparams.items()}
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len(events) == 1, (tag, events)
        scalars[tag] = events[0].value
    return hparams, scalars, end.status


@pytest.fixture
def search(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    s = FakeSearch(tmp_path / "search", data)
    s.reference(0.75, 1.0)
    s.candidate(choices(bottom_width=2, interaction=1, dcn_num_layers=1, batch_size=1), 0.7625, 1.25, est_ms=0.375)
    s.candidate(choices(), None, None, error="ValueError: boom")
    s.rejected(choices(embedding_dim=1))
    s.running(choices(top_width=1))
    return s


def test_hparams_and_metrics_read_back(search):
    for rec in search.store.trials():
        tb.log_trial(search.root, rec)
    root = search.root / "tensorboard"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]

    hp, metrics, status = _read(root / "trial_0001")
    assert hp["kind"] == "candidate" and hp["state"] == "COMPLETE" and hp["trial_id"] == 1
    assert hp["interaction"] == "dcn" and hp["dcn_num_layers"] == 2 and hp["dcn_low_rank_dim"] == 16
    assert hp["bottom_width"] == 128 and hp["batch_size"] == 512 and hp["embedding_lr"] == pytest.approx(0.01)
    assert hp["embedding_optimizer"] == "rowwise_adagrad" and hp["train_rows"] == 4096
    assert metrics == pytest.approx({
        "trial/val_auc": 0.7625, "trial/val_log_loss": 1.2 - 0.7625, "trial/test_auc": 0.7615,
        "trial/latency_p50_ms": 1.25, "trial/latency_p99_ms": 1.875, "trial/est_step_cost_ms": 0.375,
        "trial/reward": 0.7625, "trial/wall_s": 3.0,
    })
    assert status == api_pb2.STATUS_SUCCESS

    hp, metrics, status = _read(root / "trial_0000")
    assert hp["kind"] == "reference" and hp["bottom_depth"] == 2 and hp["bottom_width"] == 64
    assert "dcn_num_layers" not in hp  # the DCN knobs mean nothing for a dot interaction
    assert metrics["trial/val_auc"] == pytest.approx(0.75)

    hp, metrics, status = _read(root / "trial_0002")
    assert hp["state"] == "FAILED" and status == api_pb2.STATUS_FAILURE
    assert metrics == {"trial/est_step_cost_ms": pytest.approx(0.4), "trial/wall_s": 3.0}

    hp, metrics, status = _read(root / "trial_0003")
    assert hp["kind"] == "rejected" and hp["state"] == "REJECTED" and status == api_pb2.STATUS_UNKNOWN
    assert metrics == {}


def test_idempotent_per_trial_and_rewrites_a_changed_trial(search):
    rec = search.store.get(1)
    assert tb.log_trial(search.root, rec) is True
    assert tb.log_trial(search.root, rec) is False  # a resumed search logging it again
    assert tb.log_all(search.root, search.store.trials()) == 3  # 0, 2, 3 new; 1 done; 4 running
    assert tb.log_all(search.root, search.store.trials()) == 0
    run = search.root / "tensorboard" / "trial_0001"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    # the trial changes (e.g. retried after its worker died): its entry is replaced, not doubled
    result = TrialResult(1, TrialState.COMPLETE, auc=0.7777, latency_p50_ms=1.0)
    search.store.set_state(1, TrialState.COMPLETE, result=result)
    assert tb.log_trial(search.root, search.store.get(1)) is True
    _, metrics, _ = _read(run)
    assert metrics["trial/val_auc"] == pytest.approx(0.7777) and metrics["trial/latency_p50_ms"] == 1.0

    # a run dir deleted by hand is rewritten even though the manifest lists it
    import shutil

    shutil.rmtree(run)
    assert tb.log_trial(search.root, search.store.get(1)) is True and run.is_dir()


def test_unfinished_trials_are_not_logged(search):
    running = search.store.get(4)
    assert running.state is TrialState.RUNNING
    assert tb.log_trial(search.root, running) is False
    assert not (search.root / "tensorboard" / "trial_0004").exists()


def test_tensorboard_hparams_plugin_lists_every_trial(search):
    """What `tensorboard --logdir <search dir>` serves: the hparams plugin's own backend, over the
    search directory (trials' curves + HParams runs), finds one session per logged trial and the
    metrics as columns."""
    from tensorboard.backend.event_processing import (
        data_provider,
        plugin_event_multiplexer,
    )
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    # a trial's own training curves, as the trainer writes them under trials/<id>/tb
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(search.root / "trials" / "1" / "tb")) as w:
        for step in range(3):
            w.add_scalar("val/auc", 0.7 + 0.01 * step, step)
    tb.log_all(search.root, search.store.trials())

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(search.root))
    mux.Reload()
    assert "trials/1/tb" in mux.Runs()
    provider = data_provider.MultiplexerDataProvider(mux, str(search.root))
    context = backend_context.Context(base_plugin.TBContext(logdir=str(search.root), multiplexer=mux, data_provider=provider))
    ctx = __import__("tensorboard.context", fromlist=["RequestContext"]).RequestContext()
    experiment = context.experiment_from_metadata(
        ctx, "", True, context.hparams_metadata(ctx, ""), context.hparams_from_data_provider(ctx, "", 0)
    )
    names = {h.name for h in experiment.hparam_infos}
    assert {"trial_id", "kind", "state", "bottom_width", "interaction", "dcn_num_layers"} <= names
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"trial/val_auc", "trial/latency_p50_ms", "trial/est_step_cost_ms"} <= metrics
    assert "val/auc" not in metrics  # the trials' curves are not sessions' metrics
    sessions = {run for run, tags in context.hparams_metadata(ctx, "").items() if metadata.SESSION_START_INFO_TAG in tags}
    assert sessions == {f"tensorboard/trial_000{i}" for i in range(4)}
