"""Checkpoints are verified against their manifest before anything in them is read or unpickled."""

import dataclasses
import json
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from recsearch.train import checkpoint
from recsearch.train.checkpoint import CheckpointError
from tests.spawn import spawn_ranks


class _Optim:
    """An optimizer stand-in whose state is whatever the test puts in it."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _saved(tmp_path, seed=0):
    """A real checkpoint of a small model and its SGD state, at step 3."""
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()  # momentum buffers: tensors in the optimizer state
    path = checkpoint.save(tmp_path, 3, model, opt, {"step": 3, "epoch": 1, "history": [{"loss": 0.5}]})
    return path, model, opt


def _manifest(path):
    return json.loads((path / checkpoint.MANIFEST_FILE).read_text())


def _shard(path):
    (shard,) = path.glob("*.distcp")
    return shard


def _rewrite_manifest(path):
    """What an attacker who can write the directory does: a manifest that matches the files."""
    manifest = _manifest(path)
    for name in manifest["files"]:
        manifest["files"][name] = checkpoint._digest(path / name)
    (path / checkpoint.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_save_then_load_restores_exactly(tmp_path):
    path, model, opt = _saved(tmp_path)
    manifest = _manifest(path)
    listed = set(manifest["files"])
    assert listed == {".metadata", "loop_state.json", _shard(path).name}
    assert {p.name for p in path.iterdir()} == listed | {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry == checkpoint._digest(path / name)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000003\n"
    rng_at_save = torch.get_rng_state()

    fresh = _model(seed=1)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    fresh(torch.randn(5, 4)).sum().backward()
    fresh_opt.step()
    torch.manual_seed(99)
    resolved = checkpoint.resolve("latest", tmp_path)
    loop_state = checkpoint.load(resolved, fresh, fresh_opt)
    assert loop_state == {"step": 3, "epoch": 1, "history": [{"loss": 0.5}]}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.param_groups[0]["lr"] == 0.1  # a non-tensor entry, read with weights_only
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    assert torch.equal(torch.get_rng_state(), rng_at_save)


def test_the_shards_are_read_back_where_dcp_save_returns_metadata_without_them(tmp_path, monkeypatch):
    # torch 2.11 (the GPU machine's) returns dcp.save's metadata with storage_data None; here on
    # any torch: the save reads the shard list back from the .metadata it wrote
    real_save = checkpoint.dcp.save

    def save_as_torch_2_11(*args, **kwargs):
        return dataclasses.replace(real_save(*args, **kwargs), storage_data=None)

    monkeypatch.setattr(checkpoint.dcp, "save", save_as_torch_2_11)
    path, model, _ = _saved(tmp_path)
    assert set(_manifest(path)["files"]) == {".metadata", "loop_state.json", _shard(path).name}
    fresh = _model(seed=1)
    checkpoint.load(path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))

    def unreadable(path, data):
        raise CheckpointError("damaged")

    monkeypatch.setattr(checkpoint, "_parse_metadata", unreadable)
    with pytest.raises(CheckpointError, match="rank 0: reading back the shard list of checkpoint .* failed: damaged"):
        checkpoint.save(tmp_path, 4, model, _Optim({}), {"step": 4})


def test_flipped_bytes_in_a_shard_are_refused(tmp_path):
    path, model, opt = _saved(tmp_path)
    shard = _shard(path)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    shard.write_bytes(bytes(data))  # same size, different content
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, model, opt)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} refused: {shard}: SHA-256 ")
    assert f"differs from the manifest's {_manifest(path)['files'][shard.name]['sha256']}" in message
    assert "(same size: the content changed after the save)" in message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing loaded

    shard.write_bytes(bytes(data[:-1]))  # a truncated copy
    with pytest.raises(CheckpointError, match=f"{shard}: {len(data) - 1} bytes, the manifest says {len(data)}"):
        checkpoint.load(path, model, opt)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard}: missing \\(the manifest lists {len(data)} bytes\\)"):
        checkpoint.load(path, model, opt)


def test_a_checkpoint_without_manifest_is_refused(tmp_path):
    path, model, opt = _saved(tmp_path)
    (path / checkpoint.MANIFEST_FILE).unlink()
    expected = f"{path / 'manifest.json'} is missing, so checkpoint {path} cannot be verified and is not loaded"
    with pytest.raises(CheckpointError) as err:
        checkpoint.resolve("latest", tmp_path)
    assert str(err.value).startswith(expected)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, model, opt)
    assert str(err.value).startswith(f"checkpoint {path} refused: {expected}")

    (path / checkpoint.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: unreadable"):
        checkpoint.load(path, model, opt)
    (path / checkpoint.MANIFEST_FILE).write_text(json.dumps({"format": "recsearch-checkpoint-manifest", "version": 1, "files": {"../x": {}}}))
    with pytest.raises(CheckpointError, match="'../x' is not a plain file name"):
        checkpoint.load(path, model, opt)


def test_a_changed_loop_state_is_refused(tmp_path):
    path, model, opt = _saved(tmp_path)
    state = path / checkpoint.LOOP_STATE_FILE
    state.write_text(state.read_text().replace('"step": 3', '"step": 9'))  # same size
    with pytest.raises(CheckpointError, match=f"{state}: SHA-256 [0-9a-f]{{64}} differs"):
        checkpoint.load(path, model, opt)


class _Marker:
    """Unpickling this creates the marker file: proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_metadata_pickle_runs_no_code(tmp_path):
    path, model, opt = _saved(tmp_path)
    marker = tmp_path / "pwned"
    malicious = pickle.dumps(_Marker(marker))
    size = _manifest(path)["files"][".metadata"]["size"]
    (path / checkpoint.METADATA_FILE).write_bytes(malicious)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, model, opt)
    assert str(err.value) == (
        f"checkpoint {path} refused: {path / '.metadata'}: {len(malicious)} bytes, the manifest says {size}"
    )
    assert not marker.exists()

    # Even with a manifest that matches (written by whoever wrote the pickle), nothing runs: the
    # metadata unpickler builds only torch.distributed.checkpoint's metadata classes.
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, model, opt)
    assert str(err.value) == (
        f"checkpoint {path} refused: {path / '.metadata'}: refused (UnpicklingError: "
        f"global {open.__module__}.open is not allowed in checkpoint metadata)"  # _io from Python 3.12
    )
    assert not marker.exists()


def test_a_malicious_non_tensor_entry_runs_no_code(tmp_path):
    """torch's own load planner reads non-tensor entries with weights_only=False; ours does not."""
    marker = tmp_path / "pwned"
    model = _model(0)
    path = checkpoint.save(tmp_path, 1, model, _Optim({"note": _Marker(marker)}), {"step": 1})
    assert not marker.exists()  # pickling it runs nothing
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, _model(1), _Optim({"note": None}))
    assert str(err.value).startswith(f"{path}: cannot restore the run from it (CheckpointException")
    assert "Weights only load failed" in str(err.value)
    assert not marker.exists()


def test_a_save_that_did_not_finish_leaves_latest_on_the_previous_one(tmp_path, monkeypatch):
    _saved(tmp_path)
    model = _model(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died while writing the manifest

    real = checkpoint.remote.write_text
    monkeypatch.setattr(
        checkpoint.remote, "write_text",
        lambda target, text: killed() if str(target).endswith("manifest.json") else real(target, text),
    )
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 6, model, opt, {"step": 6})
    monkeypatch.undo()
    assert checkpoint.resolve("latest", tmp_path).name == "step_00000003"
    unfinished = tmp_path / "checkpoints" / "step_00000006"
    assert not (unfinished / "manifest.json").exists()
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.resolve(str(unfinished), tmp_path)


# ---- two ranks -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, port: int, root: str, results) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))

        def sharded(values):
            model = nn.Module()
            model.w = nn.Parameter(distribute_tensor(values, mesh, [Shard(0)]))
            return model

        model = sharded(torch.arange(16, dtype=torch.float32).reshape(8, 2))
        path = checkpoint.save(root, 5, model, _Optim({"lr": 0.25}), {"step": 5})
        restored, opt = sharded(torch.zeros(8, 2)), _Optim({"lr": 0.0})
        loop_state = checkpoint.load(path, restored, opt)
        full = restored.w.full_tensor()
        results[f"restored{rank}"] = (loop_state, opt.state["lr"], full.tolist())
        dist.barrier()
        if rank == 0:  # flip bytes in the shard rank 1 wrote
            shard = os.path.join(path, "__1_0.distcp")
            data = bytearray(open(shard, "rb").read())
            data[-4:] = bytes(b ^ 0x55 for b in data[-4:])
            open(shard, "wb").write(bytes(data))
        dist.barrier()
        try:
            checkpoint.load(path, sharded(torch.zeros(8, 2)), _Optim({"lr": 0.0}))
        except CheckpointError as err:
            results[f"error{rank}"] = str(err)
        dist.barrier()  # both ranks done before either tears the group down (tests/placement/two_ranks.py)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_ranks_manifest_covers_every_ranks_shards(tmp_path):
    results = mp.Manager().dict()
    spawn_ranks(_two_rank_worker, (_free_port(), str(tmp_path), results))
    path = tmp_path / "checkpoints" / "step_00000005"
    files = _manifest(path)["files"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "loop_state.json"} <= set(files)
    expected = torch.arange(16, dtype=torch.float32).reshape(8, 2).tolist()
    for rank in (0, 1):
        assert results[f"restored{rank}"] == ({"step": 5}, 0.25, expected)
    # Both ranks refuse, with the same message, though only one of them hashed the bad shard.
    assert results["error0"] == results["error1"]
    assert results["error0"].startswith(f"checkpoint {path} refused: {path / '__1_0.distcp'}: SHA-256 ")


# ---- through `recsearch train` -------------------------------------------------------------------
@pytest.mark.slow
def test_train_refuses_to_resume_from_a_shard_with_flipped_bytes(tmp_path, capsys):
    from recsearch.train import trainer
    from tests.train.conftest import write_learnable_dataset
    from tests.train.test_trainer import _write_config

    data = tmp_path / "data"
    write_learnable_dataset(data)
    out = tmp_path / "run"
    cfg = _write_config(tmp_path, data, output_dir=str(out), latency_batch_sizes=[])
    assert trainer.main(["--config", str(cfg), "max_steps=2", "checkpoint_every_steps=2"]) == 0
    latest = checkpoint.resolve("latest", out)
    shard = latest / "__0_0.distcp"
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[1000] ^= 0x01  # one bit, same size
    shard.write_bytes(bytes(data_bytes))
    (out / "result.json").unlink()  # a run killed after its checkpoint (a finished run's result would stay)
    capsys.readouterr()
    assert trainer.main(["--config", str(cfg), "max_steps=4", "resume_from=latest"]) == 2
    err = capsys.readouterr().err
    assert f"recsearch train: checkpoint {latest} refused: {shard}: SHA-256 " in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "refused" in result["error"]
