"""What `--resume` takes from an edited search.yaml, and what the search's own lines say:

- keys that decide what finished trials were (fidelity, space, objective, the base train config,
  ...) are refused with exit 2, naming the key, its old and new value and what may change, before
  anything is loaded or written (an edited space never reaches controller.pt's loader);
- keys that decide how the search goes on (trials, runner.*, ...) are taken;
- key=value overrides may come after the options;
- progress lines and the summary show the latency the budget judges (the paired ratio to the
  reference) where it differs from the raw p50."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from recsearch.search import loop
from recsearch.search.objective import judged_latency_note
from recsearch.search.runners import RESULT_FILE, Handle
from recsearch.search.settings import resume_changes
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import SERVING_BATCH, FakeRunner, fake_auc, resume, start_search, tiny_config
from tests.search.test_loop import learnable_data, write_config  # noqa: F401  (the fixture)


@pytest.fixture
def finished(tmp_path, learnable_data) -> Path:  # noqa: F811
    raw = tiny_config(learnable_data, **{"controller": "actor_critic", "fidelity.train_rows": [2048, 6144],
                                         "fidelity.eta": 2, "trials": 2})
    search, out = start_search(tmp_path, raw)
    assert search.run() == 0
    assert (out / loop.STARTED_CONFIG).exists() and (out / "controller.pt").exists()
    return out


def _edit(search_dir: Path, key: str, value) -> None:
    path = search_dir / loop.SEARCH_CONFIG
    raw = yaml.safe_load(path.read_text())
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name not in ("search.yaml", "search.lock")}


@pytest.mark.parametrize("key, value, shown", [
    ("fidelity.train_rows", [2048, 4096], "fidelity.train_rows: was [2048, 6144] when the search started "
                                          "(search.started.yaml), now [2048, 4096]"),
    ("space.embedding_dim", [4], "space.embedding_dim: was [4, 8] when the search started (search.started.yaml), now [4]"),
    ("objective.penalty", 0.5, "objective.penalty: was 0.1 when the search started (search.started.yaml), now 0.5"),
    ("base.latency_iters", 7, "base.latency_iters: was 3 when the search started (search.started.yaml), now 7"),
    ("seed", 5, "seed: was 0 when the search started (search.started.yaml), now 5"),
])
def test_an_edit_that_would_change_finished_trials_is_refused_naming_the_key(finished, capsys, key, value, shown):
    before = _snapshot(finished)
    _edit(finished, key, value)
    code = loop.main(["--resume", str(finished)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{finished / 'search.yaml'}: {shown}" in err
    assert "--resume takes changes to: trials, max_rejected, runner.*, heartbeat_s" in err
    assert f"recsearch search --config {finished / 'search.yaml'} --out NEW_DIR" in err
    # the clear refusal, not the controller's state failing to load into another space's network
    assert "state_dict" not in err and "size mismatch" not in err and "controller.pt" not in err
    assert _snapshot(finished) == before  # nothing written, the journal untouched


def test_trials_and_runner_settings_may_change_on_resume(finished):
    for key, value in (("trials", 3), ("runner.retries", 4), ("runner.poll_s", 0.1), ("heartbeat_s", 1.0),
                       ("base.log_every_steps", 4)):
        _edit(finished, key, value)
    runner = FakeRunner()
    assert resume(finished, runner=runner).run() == 0
    records = JournalStore(finished).trials()
    assert len(records) == 3 and runner.submitted and runner.submitted[0][0] == 2  # the third trial ran
    started = yaml.safe_load((finished / loop.STARTED_CONFIG).read_text())
    assert started["trials"] == 2  # the copy keeps the config as the search started


def test_a_search_from_before_the_started_copy_gets_one_on_resume(finished):
    (finished / loop.STARTED_CONFIG).unlink()
    _edit(finished, "trials", 3)
    assert resume(finished).run() == 0
    assert yaml.safe_load((finished / loop.STARTED_CONFIG).read_text())["trials"] == 3
    _edit(finished, "fidelity.eta", 3)
    with pytest.raises(loop.config.ConfigError, match=r"fidelity.eta: was 2 .* now 3"):
        resume(finished).run()


def test_resume_changes_compares_with_defaults_and_free_form_mappings():
    started = {"data_dir": "/d", "fidelity": {"train_rows": [10, 20]}, "space": {"model_args": {}},
               "base": {"data_dir": "/d"}}
    # a key left out means its default, not a change; a user model's decision added is one
    now = {**started, "controller": "actor_critic", "space": {"model_args": {"tower": [[8], [16]]}}}
    (change,) = resume_changes(started, now)
    assert change.key == "space.model_args.tower" and change.now == [[8], [16]]
    assert resume_changes(started, {**started, "trials": 40, "runner": {"concurrency": 4}}) == []


def test_overrides_may_come_after_options(tmp_path, learnable_data, capsys):  # noqa: F811
    cfg = write_config(tmp_path, tiny_config(learnable_data))
    out = tmp_path / "out"
    code = loop.main(["--config", str(cfg), "trials=2", "--out", str(out), "space.embedding_dim=[4]", "trials=0"])
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments" not in err
    assert "trials=0: must be >= 1, got 0" in err and not out.exists()


class _PairedLatency(FakeRunner):
    """Every model times 1.0 ms raw; its paired ratio to the fresh reference in its rounds is
    1.0 for the reference trial and 1.2 for candidates: each candidate is judged at 1.2 ms."""

    def submit(self, spec, workdir):
        self.submitted.append((spec.trial_id, spec.train_rows))
        ratio = 1.0 if spec.trial_id == 0 else 1.2
        (Path(workdir) / RESULT_FILE).write_text(json.dumps({
            "status": "completed",
            "metrics": {"val": {"auc": fake_auc(spec), "log_loss": 0.5}, "test": {"auc": fake_auc(spec)}},
            "latency_ms": {str(SERVING_BATCH): {"p50_ms": 1.0, "p99_ms": 1.5, "reference_p50_ms": 1.0 / ratio,
                                                "vs_reference": ratio}},
            "config": {"train_rows": spec.train_rows},
        }))
        now = time.time()
        handle = Handle(spec.trial_id, Path(workdir), now, started_at_s=now, finished_at_s=now)
        handle.state = TrialState.COMPLETE
        return handle


def test_progress_and_summary_show_the_latency_the_budget_judges(tmp_path, learnable_data):  # noqa: F811
    raw = tiny_config(learnable_data, **{"reference": True, "objective.budget_ms": None, "trials": 2})
    search, _ = start_search(tmp_path, raw, runner=_PairedLatency())
    lines: list[str] = []
    search.echo = lines.append
    assert search.run() == 0
    ref_line = next(x for x in lines if "trial   0 rung" in x)
    assert "lat 1.00 ms |" in ref_line  # the reference meets its own budget: nothing more to say
    cand = next(x for x in lines if "trial   1 rung" in x)
    assert "lat 1.00 ms (judged 1.20 ms = 1.200x budget)" in cand
    best = next(x for x in lines if x.startswith("[search] best: trial"))
    assert "latency 1.000 ms (judged 1.200 ms = 1.200x budget) reward" in best


def test_judged_latency_note():
    assert judged_latency_note(1.167, 1.31, 1.175) == " (judged 1.310 ms = 1.115x budget)"
    assert judged_latency_note(1.167, 1.31, 1.175, digits=2) == " (judged 1.31 ms = 1.115x budget)"
    assert judged_latency_note(1.0, 1.0001, 1.0) == ""  # the same at the shown precision
    assert judged_latency_note(None, 1.2, 1.0) == judged_latency_note(1.0, None, 1.0) == judged_latency_note(1.0, 1.2, None) == ""
