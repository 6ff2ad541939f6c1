"""The search loop end to end in this process: real training runs on a tiny learnable dataset,
results in the journal and on disk, failures recorded and survived, infeasible candidates never
trained, successive halving, resume without duplicates, config errors before any training."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from recsearch import config
from recsearch.search import checks, loop
from tests.search.configs import with_settings
from recsearch.search.controllers import RandomController, load_state
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.train.conftest import IDS_PER_FEATURE, write_learnable_dataset

# 26 tables of IDS_PER_FEATURE rows; rowwise_adagrad keeps one fp32 per row besides the weights.
TABLE_BYTES_PER_DIM = 26 * IDS_PER_FEATURE * 4
TABLE_BYTES_FIXED = 26 * IDS_PER_FEATURE * 4


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory) -> Path:
    """12,288 train rows on which a DLRM visibly learns (tests/train/conftest.py)."""
    root = tmp_path_factory.mktemp("search_learnable")
    write_learnable_dataset(root)
    return root


def search_config(data: Path, **settings) -> dict:
    """A tiny search over the learnable dataset: rungs of 2,048 and 6,144 training rows."""
    raw = {
        "data_dir": str(data),
        "base": {
            "arch": {"embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]},
            "hparams": {"batch_size": 256, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1,
                        "dense_optimizer": "adagrad", "dense_lr": 0.05},
            "latency_iters": 3,
            "latency_batch_sizes": [1],
            "log_every_steps": 8,
        },
        "space": {
            "embedding_dim": [4, 8],
            "bottom_depth": [1],
            "bottom_width": [16, 32],
            "top_depth": [1],
            "top_width": [16],
            "interaction": ["dot", "dcn"],
            "dcn_num_layers": [1],
            "dcn_low_rank_dim": [8],
            "batch_size": [256],
            "embedding_lr": {"low": 0.03, "high": 0.1, "num": 2},
            "dense_lr": {"low": 0.01, "high": 0.05, "num": 2},
        },
        "fidelity": {"train_rows": [2048, 6144], "eta": 2},
        "controller": "random",
        "trials": 4,
        "runner": {"kind": "inprocess"},
        "objective": {"serving_batch": 64},
        "heartbeat_s": 0.2,
    }
    return with_settings(raw, settings)


def write_config(tmp_path: Path, raw: dict, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def run_search(tmp_path: Path, raw: dict, out: str = "out") -> tuple[int, Path]:
    cfg = write_config(tmp_path, raw)
    code = loop.main(["--config", str(cfg), "--out", str(tmp_path / out)])
    return code, tmp_path / out


def test_inprocess_search_trains_the_budget_with_halving_and_leaves_every_file(tmp_path, learnable_data, capsys):
    code, out = run_search(tmp_path, search_config(learnable_data))
    assert code == 0
    text = capsys.readouterr().out
    records = JournalStore(out).trials()
    ref = [r for r in records if r.notes.get("reference")]
    cands = [r for r in records if not r.notes.get("reference")]
    assert len(ref) == 1 and ref[0].state is TrialState.COMPLETE and ref[0].spec.train_rows == 6144
    assert len(cands) == 4 and all(r.state.finished for r in cands)
    # eta 2, brackets of 2: per bracket one promoted to the top rung and completed, one pruned
    assert sum(r.state is TrialState.COMPLETE for r in cands) == 2
    pruned = [r for r in cands if r.state is TrialState.PRUNED]
    assert len(pruned) == 2 and all("not promoted at rung 0" in r.notes["pruned"] for r in pruned)
    for r in pruned:  # the pruned one scored no better than its bracket's winner at rung 0
        winner = next(c for c in cands if c.notes["bracket"] == r.notes["bracket"] and c is not r)
        assert r.notes["rungs"]["0"]["score"] <= winner.notes["rungs"]["0"]["score"]
    for r in cands + ref:
        assert r.result is not None and 0.5 < r.result.auc <= 1.0
        assert r.result.latency_p50_ms > 0 and r.notes["wall_s"] > 0
        d = out / "trials" / str(r.trial_id)
        trial_cfg = yaml.safe_load((d / "trial.yaml").read_text())
        result = json.loads((d / "result.json").read_text())
        assert result["config"]["train_rows"] == trial_cfg["train_rows"] == r.notes["train_rows"]
        assert trial_cfg["output_dir"] == str(d.resolve())
        # latency timed with the device to itself, beside the reference architecture
        assert trial_cfg["device_lock"] == str((out / loop.DEVICE_LOCK_FILE).resolve())
        assert trial_cfg["latency_reference"]["arch"]["bottom_mlp"] == [16, 8]
        assert r.result.latency_reference_p50_ms > 0 and r.result.latency_spread >= 0
        assert result["metrics"]["val"]["auc"] == pytest.approx(r.result.auc)
        assert list((d / "tb").iterdir()), "TensorBoard events"
        assert json.loads((d / "placement.json").read_text())["placement"]["t_cat_0"] == 0
        top = r.state is TrialState.COMPLETE  # the reference and the promoted ones ran the top rung
        # the test split is evaluated only on the top rung (below it, it decides nothing)
        assert trial_cfg["eval_splits"] == (["val", "test"] if top else ["val"])
        assert set(result["metrics"]) == ({"val", "test"} if top else {"val"})
        assert (0.5 < r.notes["test_auc"] <= 1) if top else ("test_auc" not in r.notes)
        if r in cands and top:
            # promoted: same architecture, so its latency is the one rung 0 measured, not timed again
            rung0 = json.loads((d / "rung_0" / "result.json").read_text())
            assert trial_cfg["latency_batch_sizes"] == [] and result["latency_ms"] == {}
            assert r.notes["latency_from_rung"] == 0
            assert r.result.latency_p50_ms == pytest.approx(rung0["latency_ms"]["64"]["p50_ms"])
            assert r.result.latency_reference_p50_ms == pytest.approx(rung0["latency_ms"]["64"]["reference_p50_ms"])
        else:  # timed at the serving batch only
            assert trial_cfg["latency_batch_sizes"] == [64] and list(result["latency_ms"]) == ["64"]
            assert result["latency_ms"]["64"]["reference_p50_ms"] == pytest.approx(r.result.latency_reference_p50_ms)
    for r in cands:
        assert r.notes["memory_bytes_per_device"] == [TABLE_BYTES_PER_DIM * r.spec.arch.embedding_dim + TABLE_BYTES_FIXED]
        assert r.notes["observed"] is True
        # placed once, at the proposal (the journal keeps it), and every rung trains with that placement
        placed = json.loads((out / "trials" / str(r.trial_id) / "placement.json").read_text())["placement"]
        assert r.notes["placement"] == placed and set(placed) == {f"t_cat_{i}" for i in range(26)}
        if r.state is TrialState.COMPLETE:  # promoted: its rung-0 run kept beside the top one
            rung0 = json.loads((out / "trials" / str(r.trial_id) / "rung_0" / "result.json").read_text())
            assert rung0["config"]["train_rows"] == 2048 and r.notes["train_rows"] == 6144
            assert json.loads((out / "trials" / str(r.trial_id) / "rung_0" / "placement.json").read_text())["placement"] == placed
    # the controller state saw every candidate
    controller = RandomController(loop.load_search_config(out / "search.yaml").space)
    load_state(controller, out / "controller.pt")
    assert len(controller.state_dict()["seen"]) == 4
    resolved = yaml.safe_load((out / "search.yaml").read_text())
    assert resolved["base"]["arch"]["embedding_dim"] == 8 and resolved["data_dir"] == str(learnable_data.resolve())
    # what the user sees
    assert text.count("[search] trial") >= 7 and "latency budget" in text
    assert "4/4 configurations trained (2 complete, 2 pruned" in text and "Pareto front" in text


def test_trials_that_raise_or_diverge_are_failed_with_their_error_and_the_search_goes_on(tmp_path, learnable_data):
    raw = search_config(
        learnable_data,
        **{"space.embedding_optimizer": ["rowwise_adagrad", "adam"],  # adam: refused on CPU (raises)
           "space.dense_optimizer": ["sgd"],
           "space.dense_lr": {"low": 0.05, "high": 1e12, "num": 2},  # 1e12: the loss goes NaN
           "fidelity.train_rows": [6144], "trials": 8, "controller": "random", "seed": 1}
    )
    code, out = run_search(tmp_path, raw)
    assert code == 0
    cands = [r for r in JournalStore(out).trials() if not r.notes.get("reference")]
    assert len(cands) == 8 and all(r.state.finished for r in cands)
    for r in cands:
        h = r.spec.hparams
        if h.embedding_optimizer == "adam":
            assert r.state is TrialState.FAILED and "needs a GPU" in r.result.error
        elif h.dense_lr > 1:
            assert r.state is TrialState.FAILED and "non-finite loss" in r.result.error
        else:
            assert r.state is TrialState.COMPLETE and r.result.auc > 0.6
    states = {r.state for r in cands}
    assert states == {TrialState.FAILED, TrialState.COMPLETE}


def test_infeasible_candidates_are_pruned_never_trained_and_counted(tmp_path, learnable_data, capsys):
    cap_bytes = 26 * IDS_PER_FEATURE * (8 * 4 + 4)  # exactly fits dim 8; dim 64 does not
    raw = search_config(
        learnable_data,
        **{"space.embedding_dim": [8, 64], "topology.memory_per_device_mb": cap_bytes / 2**20,
           "fidelity.train_rows": [2048], "trials": 3, "reference": False, "objective.budget_ms": 100.0,
           "space.bottom_width": [16]}
    )
    code, out = run_search(tmp_path, raw)
    assert code == 0
    records = JournalStore(out).trials()
    rejected = [r for r in records if r.notes.get("rejected")]
    trained = [r for r in records if not r.notes.get("rejected")]
    assert len(trained) == 3 and all(r.spec.arch.embedding_dim == 8 for r in trained)
    assert rejected and all(r.spec.arch.embedding_dim == 64 and r.state is TrialState.PRUNED for r in rejected)
    for r in rejected:
        assert "t_cat_" in r.notes["rejected"] and "does not fit" in r.notes["rejected"]
        assert not (out / "trials" / str(r.trial_id)).exists()  # never trained
        assert r.notes["observed"] is True  # the controller got its penalty
    printed = capsys.readouterr().out
    assert f"{len(rejected)} rejected before training" in printed
    # the progress count is of trained candidates, the budget's unit: rejected ones are not in it
    progress = [ln for ln in printed.splitlines() if ln.startswith("[search] trial") and " rung " in ln]
    assert progress[-1].endswith("| 3/3 trials done, ETA 0 s"), progress[-1]


def test_a_space_where_nothing_fits_is_an_error_before_any_training(tmp_path, learnable_data, capsys):
    raw = search_config(learnable_data, **{"topology.memory_per_device_mb": 0.001})
    code, out = run_search(tmp_path, raw)
    assert code == 2
    err = capsys.readouterr().err
    assert "no embedding_dim x embedding_optimizer option fits" in err and "t_cat_" in err
    assert not (out / "trials").exists()


def test_config_errors_name_the_file_and_every_key(tmp_path, learnable_data, capsys):
    raw = search_config(learnable_data, trails=3, **{"runner.concurrency": "two", "fidelity.train_rows": [4096, 2048]})
    path = write_config(tmp_path, raw)
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(path)
    text = str(err.value)
    assert f"{path}: trails: unknown key" in text and "runner.concurrency: expected an integer" in text
    raw = search_config(learnable_data, **{"fidelity.train_rows": [4096, 2048], "objective.serving_batch": 99999})
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(write_config(tmp_path, raw))
    assert "strictly increasing" in str(err.value) and "objective.serving_batch: 99999 > the test split" in str(err.value)
    raw = search_config(learnable_data, **{"fidelity.train_rows": [100, 999999]})
    with pytest.raises(config.ConfigError, match="top rung 999,999 > the train split's 12,288 rows") as err:
        loop.load_search_config(write_config(tmp_path, raw))
    assert "smaller than one batch" in str(err.value)
    raw = search_config(tmp_path / "nowhere")
    with pytest.raises(config.ConfigError, match="data_dir"):
        loop.load_search_config(write_config(tmp_path, raw))
    raw = search_config(learnable_data, **{"space.embedding_dim": []})
    with pytest.raises(config.ConfigError, match="embedding_dim has no options"):
        loop.load_search_config(write_config(tmp_path, raw))
    raw = search_config(learnable_data, reference=False)
    with pytest.raises(config.ConfigError, match="reference is false"):
        loop.load_search_config(write_config(tmp_path, raw))
    raw = search_config(learnable_data, train=str(tmp_path / "missing.yaml"))
    with pytest.raises(config.ConfigError, match="train: .*missing.yaml: file not found"):
        loop.load_search_config(write_config(tmp_path, raw))
    raw = search_config(learnable_data, **{"base.hparams.batch_sise": 3})
    with pytest.raises(config.ConfigError, match=r"base of|base: hparams.batch_sise: unknown key"):
        loop.load_search_config(write_config(tmp_path, raw))
    raw = search_config(learnable_data, **{"runner.kind": "inprocess", "runner.concurrency": 2})
    with pytest.raises(config.ConfigError, match="one trial at a time"):
        loop.load_search_config(write_config(tmp_path, raw))
    # contradictory or unknown options: errors before anything runs, all at once
    raw = search_config(learnable_data, **{"space.embedding_dim": [16, 48], "space.interaction": ["dot", "projection"],
                                           "space.embedding_optimizer": ["rowwise_adagrad", "adagrd"],
                                           "space.dense_optimizer": ["adam", "lion"]})
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(write_config(tmp_path, raw))
    text = str(err.value)
    assert "embedding_dim 48 with interaction projection" in text and "embedding_dim 16 with" not in text
    assert "space.embedding_optimizer: 'adagrd' not one of sgd, adagrad, rowwise_adagrad, adam" in text
    assert "space.dense_optimizer: 'lion' not one of" in text and "'adam'" not in text


def test_cli_refuses_to_reuse_a_search_dir_and_to_resume_a_non_search(tmp_path, learnable_data, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "search.yaml").write_text("data_dir: x\n")
    path = write_config(tmp_path, search_config(learnable_data))
    assert loop.main(["--config", str(path), "--out", str(tmp_path / "old")]) == 2
    assert "already holds a search" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert loop.main(["--resume", str(tmp_path / "empty")]) == 2
    assert "not a search directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loop.main(["--resume", str(tmp_path / "old"), "trials=3"])


def test_resume_after_an_interruption_finishes_the_budget_without_rerunning_finished_trials(tmp_path, learnable_data):
    raw = search_config(learnable_data, **{"fidelity.train_rows": [2048], "trials": 2, "controller": "actor_critic"})
    code, out = run_search(tmp_path, raw)
    assert code == 0
    before = {r.trial_id: r for r in JournalStore(out).trials()}
    # the same directory, a bigger budget: edit the resolved config, as a user would
    resolved = yaml.safe_load((out / "search.yaml").read_text())
    resolved["trials"] = 4
    (out / "search.yaml").write_text(yaml.safe_dump(resolved))
    assert loop.main(["--resume", str(out)]) == 0
    after = JournalStore(out).trials()
    assert len([r for r in after if not r.notes.get("reference")]) == 4
    for trial_id, rec in before.items():  # finished trials untouched: same result, never rerun
        now = next(r for r in after if r.trial_id == trial_id)
        assert now.result == rec.result and now.attempts == rec.attempts == 1
    choices = [r.spec.extra["choices"] for r in after if not r.notes.get("reference")]
    assert len(set(choices)) == len(choices)
    # the reloaded actor-critic kept learning: one update per observed trial, before and after the resume
    state = torch.load(out / "controller.pt", weights_only=True)
    assert [x["trials"] for x in state["losses"]] == [1, 2, 3, 4] and state["updates"] == 4


@pytest.mark.slow
def test_estimated_step_cost_rejects_candidates_before_training(tmp_path, learnable_data, capsys):
    """Placed for a GPU topology (the shipped H100 cost net estimates each candidate's step):
    with a step-cost budget, and with a hard cap beside a latency budget, the batch-1024
    candidates (about 4x the estimated step of batch 256) are rejected untrained, with the numbers.
    The budget sits between the two estimates, so the test holds for any retrained cost net."""
    common = {"space.batch_size": [256, 1024], "space.embedding_dim": [8], "fidelity.train_rows": [6144],
              "topology.compute_device": "cuda", "reference": False, "trials": 2, "seed": 0}
    probe = search_config(learnable_data, **common, **{"objective.budget_ms": 1.0})
    res = loop.load_search_config(write_config(tmp_path, probe, "probe.yaml"))
    checker = checks.Checker(res.tables, res.cfg.topology.topology(), res.cfg.placer, res.cfg.seed)
    est_ms = {b: checker.check(checks._probe(res.space, 8, "rowwise_adagrad", b)).est_step_cost_ms for b in (256, 1024)}
    assert est_ms[256] is not None and est_ms[1024] > 2 * est_ms[256], est_ms
    budget_ms = round((est_ms[256] * est_ms[1024]) ** 0.5, 4)
    searches = {
        "step_cost": {"objective.metric": "step_cost", "objective.budget_ms": budget_ms},
        "capped": {"objective.metric": "latency", "objective.budget_ms": 100.0, "objective.max_step_cost_ms": budget_ms},
    }
    for name, objective in searches.items():
        code, out = run_search(tmp_path, search_config(learnable_data, **common, **objective), out=name)
        assert code == 0
        records = JournalStore(out).trials()
        trained = [r for r in records if not r.notes.get("rejected")]
        rejected = [r for r in records if r.notes.get("rejected")]
        assert len(trained) == 2 and all(r.spec.hparams.batch_size == 256 for r in trained)
        assert all(r.state is TrialState.COMPLETE and 0 < r.notes["est_step_cost_ms"] <= budget_ms for r in trained)
        assert rejected, f"{name}: no batch-1024 candidate was proposed"
        for r in rejected:
            assert r.spec.hparams.batch_size == 1024 and r.notes["est_step_cost_ms"] > budget_ms
            assert f"estimated step cost {r.notes['est_step_cost_ms']:.3f} ms is over" in r.notes["rejected"]
            assert not (out / "trials" / str(r.trial_id)).exists()


def test_a_step_cost_cap_without_a_cost_model_is_an_error(tmp_path, learnable_data, monkeypatch):
    monkeypatch.setattr(checks, "_load_cost_net", lambda device: (None, "no cost net for this device"))
    raw = search_config(learnable_data, **{"objective.max_step_cost_ms": 1.0})
    code, out = run_search(tmp_path, raw)
    assert code == 2 and not (out / "trials").exists()


def test_the_stall_check_reads_a_runs_files_once_per_stall_timeout_not_every_poll(tmp_path, monkeypatch):
    """Search._stalled looks at progress.json/train.log only once what it last saw of the run is
    runner.stall_timeout_s old (their times only move on); a run quiet that long is killed."""
    import time
    from types import SimpleNamespace

    from recsearch.search.runners import Handle

    seen: list[float] = []
    activity = {"at": None}

    def last_activity_s(directory, log_name=None):
        seen.append(time.time())
        return activity["at"]

    monkeypatch.setattr(loop, "last_activity_s", last_activity_s)
    cancelled, echoed = [], []
    fake = SimpleNamespace(cfg=SimpleNamespace(runner=SimpleNamespace(stall_timeout_s=30.0, kind="pool")),
                           _cancel_quietly=cancelled.append, echo=echoed.append)
    now = time.time()
    handle = Handle(0, tmp_path, now - 10, started_at_s=now - 10)
    for _ in range(3):  # started 10 s ago: nothing to look at yet
        assert not loop.Search._stalled(fake, handle)
    assert seen == []
    handle.started_at_s = now - 40
    activity["at"] = now - 5  # it wrote 5 s ago: looked at once, then not again for 25 s
    for _ in range(3):
        assert not loop.Search._stalled(fake, handle)
    assert len(seen) == 1 and not cancelled
    handle.info["active_at_s"] = now - 31  # what it last saw is a stall timeout old: look again
    activity["at"] = now - 31  # and nothing new: stalled, killed
    assert loop.Search._stalled(fake, handle)
    assert len(seen) == 2 and cancelled == [handle] and handle.state is TrialState.FAILED
    assert handle.error.startswith("stalled: no progress for 31 s") and echoed
    # a torchx job, or no stall timeout: never looked at
    fake.cfg.runner.kind = "torchx"
    assert not loop.Search._stalled(fake, Handle(1, tmp_path, now - 99, started_at_s=now - 99))
    assert len(seen) == 2
