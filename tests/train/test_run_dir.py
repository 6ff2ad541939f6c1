"""A run's output folder: a fresh run does not write over another run's work, checkpoints are
kept by recency, a resume of another model is refused naming the shapes, and SIGTERM / Ctrl-C
end a run with its result, its progress file's last word and a way to resume."""

import json
import os
import signal
import subprocess
import time

import pytest

from recsearch.train import checkpoint, trainer
from recsearch.train.progress import PROGRESS_FILE
from tests.reliability.search_helpers import CLI, REPO, env
from tests.train.test_trainer import _write_config


def _run(tmp_path, data, out, *overrides):
    cfg = _write_config(tmp_path, data, latency_batch_sizes=[], output_dir=str(out), tensorboard=True)
    return trainer.main(["--config", str(cfg), *overrides])


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_run_in_a_used_folder_is_refused_and_overwrite_output_clears_it(tmp_path, learnable_data, capsys):
    out = tmp_path / "run"
    assert _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=2") == 0
    before = _files(out)
    capsys.readouterr()
    assert _run(tmp_path, learnable_data, out, "max_steps=3", "checkpoint_every_steps=1") == 2
    err = capsys.readouterr().err
    assert (f"output_dir {out} already holds another run: 2 checkpoints (latest: step_00000004) and the result of a "
            "completed run (result.json). Continue that run with resume_from=latest") in err
    assert _files(out) == before  # nothing written, nothing deleted

    assert _run(tmp_path, learnable_data, out, "max_steps=3", "checkpoint_every_steps=1", "overwrite_output=true") == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # the old run's events went with it


def test_a_folder_whose_run_failed_before_any_checkpoint_is_reused(tmp_path, learnable_data):
    out = tmp_path / "run"
    assert _run(tmp_path, learnable_data, out, "max_steps=2", "plan=no_such_placer") == 2  # the typo
    assert json.loads((out / "result.json").read_text())["status"] == "failed"
    assert _run(tmp_path, learnable_data, out, "max_steps=2") == 0  # the retry after fixing it
    assert json.loads((out / "result.json").read_text())["status"] == "completed"


def test_checkpoints_are_kept_by_the_time_they_were_written_not_their_step(tmp_path):
    """A run resumed from an earlier checkpoint writes lower steps than the one it branched from:
    what it just wrote stays, with the most recent other one."""
    root = tmp_path / "checkpoints"
    written_s = {"step_00000800": 100, "step_00000900": 200, "step_00000400": 50, "step_00000500": 300}
    for name, when in written_s.items():
        (root / name).mkdir(parents=True)
        (root / name / checkpoint.MANIFEST_FILE).write_text("{}")
        os.utime(root / name / checkpoint.MANIFEST_FILE, (when, when))
    (root / "step_00000600").mkdir()  # an interrupted save: no manifest, the oldest of all
    newest = root / "step_00000500"
    older = checkpoint._older_checkpoints(root, newest)
    assert sorted(p.name for p in older) == ["step_00000400", "step_00000600", "step_00000800"]


def test_a_resume_of_another_model_is_refused_naming_the_shapes(tmp_path, learnable_data, capsys):
    out = tmp_path / "run"
    assert _run(tmp_path, learnable_data, out, "max_steps=2", "checkpoint_every_steps=2") == 0
    (out / "result.json").unlink()  # a run killed after its checkpoint
    capsys.readouterr()
    assert _run(tmp_path, learnable_data, out, "max_steps=4", "resume_from=latest", "arch.top_mlp=[32,1]") == 2
    err = capsys.readouterr().err
    latest = checkpoint.resolve("latest", out)
    assert (f"checkpoint {latest} holds another model than this run's: model.over_arch.model.0._mlp.0._linear.weight "
            "[16, ") in err
    assert "there, [32, " in err and "resume with its settings, or start a new run" in err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "how"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                  (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_a_stopped_run_exits_with_the_signal_code_its_result_and_how_to_resume(tmp_path, learnable_data, sig, code, how):
    out = tmp_path / "run"
    cfg = _write_config(tmp_path, learnable_data, latency_batch_sizes=[], output_dir=str(out), epochs=50,
                        checkpoint_every_steps=1, log_every_steps=1)  # mostly saving: a stop lands in a save
    proc = subprocess.Popen([*CLI, "train", "--config", str(cfg)], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "latest").exists():  # once it has a checkpoint to resume
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or wrote no checkpoint"
            time.sleep(0.2)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, output[-3000:]
    assert f"[recsearch train] {how}; the newest checkpoint is {out / 'checkpoints'}/step_" in output
    assert "continue with the same command and resume_from=latest" in output and "Traceback" not in output
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == how
    assert json.loads((out / PROGRESS_FILE).read_text())["phase"] == "stopped"
    stopped_at = json.loads((checkpoint.resolve("latest", out) / checkpoint.LOOP_STATE_FILE).read_text())["step"]
    assert trainer.main(["--config", str(cfg), "resume_from=latest", f"max_steps={stopped_at + 2}"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == stopped_at + 2


def test_resume_from_auto_starts_fresh_then_continues_its_own_run(tmp_path, learnable_data, capsys):
    """A retried or requeued job reruns the same command: the first run starts fresh, the rerun
    continues from its newest checkpoint instead of being refused (a used folder) or failing (no
    checkpoint yet, with resume_from=latest)."""
    out = tmp_path / "run"
    assert _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=2", "resume_from=auto") == 0
    assert "resumed from" not in capsys.readouterr().out
    assert _run(tmp_path, learnable_data, out, "max_steps=6", "checkpoint_every_steps=2", "resume_from=auto") == 0
    assert "resumed from latest at step 4" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["steps"] == 6


def test_sigterm_during_a_checkpoint_save_lands_after_it_and_the_checkpoint_is_whole(tmp_path, learnable_data,
                                                                                      monkeypatch, capsys):
    """A scheduler's SIGTERM that comes while a checkpoint is written: the save completes (the
    newest checkpoint is whole, `latest` names it), then the run stops with exit 143 (it was
    exit 2, a CheckpointError wrapping the interrupt, and a half-written checkpoint)."""
    real_save = checkpoint.save
    saves = []

    def save_with_a_stop_inside(out_dir, step, *args, **kwargs):
        saves.append(step)
        if len(saves) == 2:
            signal.raise_signal(signal.SIGTERM)  # lands inside the save
        return real_save(out_dir, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_with_a_stop_inside)
    out = tmp_path / "run"
    assert _run(tmp_path, learnable_data, out, "max_steps=8", "checkpoint_every_steps=2") == 143
    assert saves == [2, 4] and checkpoint.resolve("latest", out).name == "step_00000004"
    assert "terminated (SIGTERM); the newest checkpoint is" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
