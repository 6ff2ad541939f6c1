"""Checkpoint and resume of a training run.

A checkpoint is a directory `<output_dir>/checkpoints/step_<N>/` holding
- the sharded model and both optimizers (fused embedding + dense), written by
  torch.distributed.checkpoint (each rank writes its own `__<rank>_<i>.distcp` shards and rank 0
  the `.metadata` index; ShardedTensors are handled), together with the torch RNG state;
- `loop_state.json`: step, epoch, batch position in the epoch, counters and history, and under
  `checkpoint` what the save adds itself: the embedding kernels' iteration counter and the
  settings that define the data order (batch size, seed, train rows);
- `manifest.json`: the size and SHA-256 of every other file, written last (after every rank
  finished writing and hashed its own shards), atomically.

The run's `checkpoints/latest` file names the newest *complete* checkpoint and is replaced
atomically only after the manifest is written, so a run killed mid-save resumes from the previous
one. Checkpoints are taken between training stretches, when the pipeline holds no batch, so the
data position is exact: resuming replays `iter_from(batch_in_epoch)` of the same epoch order (the
shuffle is a function of seed and epoch, the LR schedule a function of the step). A resume whose
batch size, seed or number of train rows differs from the checkpoint's is refused: its position
would count batches of another order.

FBGEMM keeps the step count of Adam-family tables (their bias correction) in each TBE's `iter`
buffer, which neither torchrec's model nor its fused optimizer state_dict holds: the save records
it and the load sets it back (`set_embedding_iteration`), so a resumed Adam run continues the
straight run's bias correction instead of restarting it.

Loading verifies before it reads: the manifest must be there and every file it lists must have
its recorded size and SHA-256 (each rank checks a share of the shards, and all ranks agree on the
verdict); only then is anything unpickled. `.metadata` (a pickle) is hashed and parsed from the
same bytes, with an unpickler that only builds torch.distributed.checkpoint's metadata classes,
and non-tensor entries are read with `torch.load(weights_only=True)`. The manifest catches
corruption, torn copies and files swapped after the save; it is not a signature: whoever can write
a checkpoint directory can write a matching manifest, so a checkpoint stays trusted input, as torch
says of every pickle-based format (docs/TRAINING.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

from recsearch import remote

CHECKPOINT_DIR = "checkpoints"
SAVED_BY_CHECKPOINT = "checkpoint"  # the loop state's entry that save() adds and load() takes out
LATEST_FILE = "latest"
LOOP_STATE_FILE = "loop_state.json"
METADATA_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards (a pickle)
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "recsearch-checkpoint-manifest"
MANIFEST_VERSION = 1
KEEP_CHECKPOINTS = 2
_HASH_BLOCK = 1 << 22
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # plain file names only: no directories, no '..'
_RANK_PREFIX = re.compile(r"__(\d+)_")  # FileSystemWriter's `__<rank>_<i>.distcp`


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, altered or does not match the run."""


def save(
    out_dir: Path | str, step: int, model: torch.nn.Module, optimizer: Any, loop_state: dict,
    data_order: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of every rank's shards (a collective: all ranks call it). `data_order`:
    the settings that define the data order the loop state's position counts in (config key ->
    value), checked by load()."""
    root = Path(out_dir) / CHECKPOINT_DIR
    path = root / f"step_{step:08d}"
    rank, world_size = _rank_and_world()
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # a leftover of an interrupted save of this very step
    _barrier()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    try:
        written = dcp.save(state, checkpoint_id=str(path))  # returns on each rank once all wrote
    except CheckpointException as err:  # not an Exception subclass: convert, keep the cause
        raise CheckpointError(f"writing checkpoint {path} failed: {err}") from err
    # Every rank's kernels took the same forwards; a rank may hold none (all tables elsewhere).
    iterations = [i for i in _gather(embedding_iteration(model)) if i is not None]
    saved_here = {"embedding_iteration": max(iterations) if iterations else None, "data_order": data_order}
    if rank == 0:
        remote.write_text(path / LOOP_STATE_FILE,
                          json.dumps({**loop_state, SAVED_BY_CHECKPOINT: saved_here}, allow_nan=True) + "\n")
    # Each rank hashes its own shards (still in its page cache, and in parallel); rank 0 gathers
    # them. On a shared filesystem rank 0 could read every shard, but only after the others'
    # writes are visible to it, and alone; the shards a rank wrote are certainly visible to it.
    shards = _written_shards(written, path, rank)
    report: dict[str, Any] = {}
    try:
        for i, name in enumerate(shards):
            if _share_of(name, i, world_size) == rank:
                report[name] = _digest(path / name)
        if rank == 0:
            for name in (METADATA_FILE, LOOP_STATE_FILE):
                report[name] = _digest(path / name)
    except OSError as err:
        report = {"error": f"rank {rank}: hashing checkpoint {path} failed: {err}"}
    reports = _gather(report)  # every rank takes part, also after an error: no rank waits forever
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise CheckpointError("; ".join(errors))
    if rank == 0:
        files = {name: entry for r in reports for name, entry in r.items()}
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step, "world_size": world_size,
            "files": dict(sorted(files.items())),
        }
        remote.write_text(path / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")  # last
    _barrier()
    if rank == 0:
        remote.write_text(root / LATEST_FILE, path.name + "\n")
        for old in _older_checkpoints(root, path):
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def _older_checkpoints(root: Path, newest: Path) -> list[Path]:
    """The checkpoints under `root` past the KEEP_CHECKPOINTS most recently written (`newest`, just
    written, and those whose manifest is newest; one without a manifest never completed). By
    write time, not step: a run resumed from an earlier checkpoint writes lower steps than a
    later one it branched from, and must not delete what it just wrote."""

    def written_ns(checkpoint: Path) -> int:
        try:
            return (checkpoint / MANIFEST_FILE).stat().st_mtime_ns
        except OSError:
            return -1

    others = sorted((p for p in root.glob("step_*") if p.is_dir() and p != newest), key=written_ns, reverse=True)
    return others[KEEP_CHECKPOINTS - 1:]


def latest_named(out_dir: Path | str) -> Path | None:
    """The checkpoint directory `<out_dir>/checkpoints/latest` names (whether or not it is still
    there), or None where no pointer can be read: the run has saved no checkpoint."""
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST_FILE
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    return pointer.parent / name if name else None


def resolve(resume_from: str, out_dir: Path | str) -> Path:
    """`latest` (the run's newest complete checkpoint) or a checkpoint directory."""
    if resume_from == "latest":
        path = latest_named(out_dir)
        if path is None:
            raise CheckpointError(f"resume_from=latest: no checkpoint in {Path(out_dir) / CHECKPOINT_DIR}")
        if not path.is_dir():
            raise CheckpointError(f"resume_from=latest: {path.parent / LATEST_FILE} names {path.name}, which is not there")
    else:
        path = Path(resume_from)
        if not path.is_dir():
            raise CheckpointError(f"resume_from={resume_from}: no such checkpoint directory"
                                  + (" (it is a file)" if path.exists() else ""))
    missing = [name for name in (LOOP_STATE_FILE, METADATA_FILE) if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint (no {' or '.join(missing)})")
    if not (path / MANIFEST_FILE).exists():
        raise CheckpointError(_no_manifest(path))
    return path


def load(path: Path, model: torch.nn.Module, optimizer: Any, data_order: dict[str, Any] | None = None) -> dict:
    """Restore model, optimizers, the embedding kernels' iteration counter and RNG in place from
    `path`; return the loop state (what save() was given). A collective: all ranks call it.
    Every file is checked against the manifest first, then the world size and `data_order`
    against the checkpoint's (checkpoints that did not record one are not checked)."""
    path = Path(path)
    metadata, loop_state = verify(path)
    saved_here = loop_state.pop(SAVED_BY_CHECKPOINT, None) or {}
    if not isinstance(saved_here, dict):
        raise CheckpointError(f"{path / LOOP_STATE_FILE}: corrupt ({SAVED_BY_CHECKPOINT!r} is not an object)")
    _check_world_size(path, _rank_and_world()[1])
    _check_data_order(path, saved_here.get("data_order"), data_order, loop_state)
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    _check_model_shapes(path, metadata, state["model"])
    try:
        dcp.load(state, storage_reader=_VerifiedReader(path, metadata), planner=_WeightsOnlyLoadPlanner())
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as err:
        raise CheckpointError(f"{path}: cannot restore the run from it ({type(err).__name__}: {err})") from err
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"]["torch"])
    # Checkpoints from before the counter was saved: the step, what it counts without evaluations.
    iteration = saved_here.get("embedding_iteration")
    set_embedding_iteration(model, int(iteration if iteration is not None else loop_state.get("step", 0)))
    return loop_state


def _check_model_shapes(path: Path, metadata: dcp_metadata.Metadata, model_state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another model before loading (torch.distributed.checkpoint would
    fail deep inside with a size mismatch): every parameter and buffer the checkpoint holds under
    this model's names must have this model's (global) shape."""
    differing = []
    for name, value in model_state.items():
        saved = getattr(metadata.state_dict_metadata.get(f"model.{name}"), "size", None)
        if saved is None or not hasattr(value, "size"):
            continue
        here = tuple(value.size())
        if tuple(saved) != here:
            differing.append(f"{name} {list(saved)} there, {list(here)} here")
    if differing:
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise CheckpointError(
            f"checkpoint {path} holds another model than this run's: {'; '.join(differing[:3])}{more}. The "
            "architecture (arch.*, model, model_args) or the table sizes (max_rows_per_table, the data's tables) "
            "differ from the run that saved it: resume with its settings, or start a new run"
        )


# ---- FBGEMM's iteration counter ------------------------------------------------------------------
def embedding_kernels(model: torch.nn.Module) -> list[SplitTableBatchedEmbeddingBagsCodegen]:
    """FBGEMM's TBE modules in `model`: registered submodules, and the ones torchrec keeps in plain
    lists outside modules() (FusedEmbeddingBagCollection's `_emb_modules`, a sharded collection's
    `_lookups` under DistributedModelParallel)."""
    found: dict[int, SplitTableBatchedEmbeddingBagsCodegen] = {}
    seen: set[int] = set()
    pending: list[torch.nn.Module] = [model]
    while pending:
        for module in pending.pop().modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            if isinstance(module, SplitTableBatchedEmbeddingBagsCodegen):
                found[id(module)] = module
            for value in vars(module).values():
                if isinstance(value, (list, tuple)):
                    pending.extend(item for item in value if isinstance(item, torch.nn.Module))
    return list(found.values())


def embedding_iteration(model: torch.nn.Module) -> int | None:
    """The largest `iter` of the model's TBE modules, or None without any. FBGEMM advances it at
    every forward of a table trained by Adam or row-wise Adagrad (evaluation forwards included;
    SGD and Adagrad tables leave it at 0) and Adam's bias correction reads it. Reads the device:
    call it between steps."""
    counters = [int(tbe.iter.max()) for tbe in embedding_kernels(model) if isinstance(getattr(tbe, "iter", None), torch.Tensor)]
    return max(counters) if counters else None


def set_embedding_iteration(model: torch.nn.Module, iteration: int) -> int:
    """Set the `iter` buffer of every TBE module in `model` to `iteration` (in place, on its device)
    and return how many were set. FBGEMM copies `iter` to its host-side counter `iter_cpu` at the
    first forward while that is 0; it is zeroed so that copy happens again."""
    count = 0
    with torch.no_grad():
        for tbe in embedding_kernels(model):
            counter = getattr(tbe, "iter", None)
            if not isinstance(counter, torch.Tensor):
                continue
            counter.fill_(iteration)
            host = getattr(tbe, "iter_cpu", None)
            if isinstance(host, torch.Tensor):
                host.fill_(0)
            count += 1
    return count


def verify(path: Path | str) -> tuple[dcp_metadata.Metadata, dict]:
    """Check a checkpoint against its manifest and return its parsed `.metadata` and loop state;
    CheckpointError naming each file that is missing or differs. A collective when a process
    group is up: each rank hashes a share of the shards and every rank gets the same verdict."""
    path = Path(path)
    rank, world_size = _rank_and_world()
    problems: list[str] = []
    metadata, loop_state = None, None
    try:
        files = _read_manifest(path)
        metadata = _parse_metadata(path, _checked_bytes(path, METADATA_FILE, files))
        loop_state = _parse_loop_state(path, _checked_bytes(path, LOOP_STATE_FILE, files))
        shards = _shard_names(metadata)
        unlisted = [name for name in shards if name not in files]
        if unlisted:
            raise CheckpointError(
                f"{path / METADATA_FILE} names data files the manifest does not list: {unlisted}"
            )
        for i, name in enumerate(shards):
            if _share_of(name, i, world_size) == rank:
                problem = _check_file(path, name, files[name])
                if problem:
                    problems.append(problem)
    except CheckpointError as err:
        problems.append(str(err))
    verdicts = _gather(problems)
    everything = sorted({p for ranks_problems in verdicts for p in ranks_problems})
    if everything:
        raise CheckpointError(f"checkpoint {path} refused: " + "; ".join(everything))
    assert metadata is not None and loop_state is not None
    return metadata, loop_state


# ---- the manifest --------------------------------------------------------------------------------
def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            sha.update(block)
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest()}


def _no_manifest(path: Path) -> str:
    return (
        f"{path / MANIFEST_FILE} is missing, so checkpoint {path} cannot be verified and is not "
        "loaded (a save that did not finish, or a checkpoint from a recsearch without manifests)"
    )


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {file name: {"size", "sha256"}}, checked for shape and safe names."""
    manifest_path = path / MANIFEST_FILE
    try:
        raw = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(_no_manifest(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable ({err})") from err
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{manifest_path}: not a recsearch checkpoint manifest")
    if raw.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{manifest_path}: unsupported manifest version {raw.get('version')!r}")
    files = raw.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{manifest_path}: 'files' must map file names to size and sha256")
    for name, entry in files.items():
        if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise CheckpointError(f"{manifest_path}: {name!r} is not a plain file name")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        ):
            raise CheckpointError(f"{manifest_path}: entry {name!r} needs an integer size and a sha256")
    for name in (METADATA_FILE, LOOP_STATE_FILE):
        if name not in files:
            raise CheckpointError(f"{manifest_path}: does not list {name}")
    return files


def _check_world_size(path: Path, world_size: int) -> None:
    """Refuse to resume with another number of ranks than the checkpoint was written by: the loop
    state's position in the epoch counts that many ranks' batches, in that world size's shuffled
    block order, so the resumed run would silently replay and skip other rows. (Manifests written
    before the world size was recorded are not checked.)"""
    saved = json.loads((path / MANIFEST_FILE).read_text()).get("world_size")
    if saved is not None and saved != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved} rank(s) and this run has {world_size}: resume it "
            f"with {saved} rank(s) (its data position in the epoch is that of {saved} rank(s))"
        )


def _check_data_order(
    path: Path, saved: dict[str, Any] | None, current: dict[str, Any] | None, loop_state: dict
) -> None:
    """Refuse a resume whose data order differs from the checkpoint's: its epoch and batch position
    count batches of the saved batch size, over the saved rows, in the saved seed's shuffle."""
    if not saved or not current:
        return
    differing = [key for key in sorted(saved.keys() & current.keys()) if saved[key] != current[key]]
    if differing:
        changes = ", ".join(f"{key}={saved[key]!r} there, {current[key]!r} here" for key in differing)
        raise CheckpointError(
            f"checkpoint {path} was saved with another data order ({changes}): its position (epoch "
            f"{loop_state.get('epoch')}, batch {loop_state.get('batch_in_epoch')}) counts batches of that order, so "
            f"this run would replay and skip other rows; resume with "
            + ", ".join(f"{key}={saved[key]!r}" for key in differing)
        )


def _check_file(path: Path, name: str, expected: dict[str, Any]) -> str | None:
    """What differs between the file and its manifest entry, or None."""
    target = path / name
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        return f"{target}: missing (the manifest lists {expected['size']} bytes)"
    if size != expected["size"]:
        return f"{target}: {size} bytes, the manifest says {expected['size']}"
    actual = _digest(target)["sha256"]
    if actual != expected["sha256"]:
        return (
            f"{target}: SHA-256 {actual} differs from the manifest's {expected['sha256']} "
            "(same size: the content changed after the save)"
        )
    return None


def _checked_bytes(path: Path, name: str, files: dict[str, dict[str, Any]]) -> bytes:
    """The file's bytes, once their size and hash match the manifest (what is parsed is what was
    hashed: nothing can change in between)."""
    target = path / name
    expected = files[name]
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{target}: missing (the manifest lists {expected['size']} bytes)") from None
    except OSError as err:
        raise CheckpointError(f"{target}: unreadable ({err})") from err
    if len(data) != expected["size"]:
        raise CheckpointError(f"{target}: {len(data)} bytes, the manifest says {expected['size']}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected["sha256"]:
        raise CheckpointError(
            f"{target}: SHA-256 {actual} differs from the manifest's {expected['sha256']} "
            "(same size: the content changed after the save)"
        )
    return data


def _parse_loop_state(path: Path, data: bytes) -> dict:
    try:
        loop_state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / LOOP_STATE_FILE}: corrupt ({err})") from err
    if not isinstance(loop_state, dict):
        raise CheckpointError(f"{path / LOOP_STATE_FILE}: corrupt (not a JSON object)")
    return loop_state


# ---- reading without running code ----------------------------------------------------------------
class _MetadataUnpickler(pickle.Unpickler):
    """Builds torch.distributed.checkpoint's Metadata and nothing else: the classes of its metadata
    module, _StorageInfo, paths, torch.Size, dtypes and layouts. Any other global (os.system,
    builtins.eval, ...) is refused before it is looked up."""

    _ALLOWED = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            if module == "pathlib":
                return getattr(pathlib, name)
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == dcp_metadata.__name__:
            found = getattr(dcp_metadata, name, None)
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in checkpoint metadata")


def _parse_metadata(path: Path, data: bytes) -> dcp_metadata.Metadata:
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # a malformed pickle raises anything from EOFError to TypeError
        raise CheckpointError(f"{path / METADATA_FILE}: refused ({type(err).__name__}: {err})") from err
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{path / METADATA_FILE}: not torch.distributed.checkpoint metadata")
    for info in metadata.storage_data.values():
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise CheckpointError(f"{path / METADATA_FILE}: malformed storage entry {info!r}")
    return metadata


class _VerifiedReader(FileSystemReader):
    """FileSystemReader that hands torch the metadata `verify` already checked and parsed, instead
    of unpickling `.metadata` again with the plain pickle module."""

    def __init__(self, path: Path, metadata: dcp_metadata.Metadata):
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        if kwargs.get("rank") is not None:  # the per-rank metadata fallback: never written here
            raise FileNotFoundError("recsearch checkpoints have one global .metadata")
        metadata = self._metadata
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """The default planner, but non-tensor entries are read with torch.load(weights_only=True)
    (torch's own planner uses weights_only=False for them)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


# ---- ranks ---------------------------------------------------------------------------------------
def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard_names(metadata: dcp_metadata.Metadata) -> list[str]:
    """The data files a checkpoint's metadata names, sorted (each once)."""
    return sorted({info.relative_path for info in metadata.storage_data.values()})


def _written_shards(written: dcp_metadata.Metadata, path: Path, rank: int) -> list[str]:
    """The data files of the checkpoint at `path` that dcp.save just wrote (`written`: the
    metadata it returned). Every rank calls it: with torch 2.11 it is a collective.

    torch 2.13 records the files in the metadata dcp.save returns; torch 2.11 (the GPU
    machine's) records them only on a copy (FileSystemWriter.finish), so the returned one has
    storage_data None. Then rank 0, which wrote the `.metadata` file, reads the list back from it
    and sends it to the others, or sends its error so that every rank raises it."""
    if written.storage_data is not None:
        return _shard_names(written)
    names_or_error: list[str] | str = []  # what rank 0 sends; the other ranks' value is unused
    if rank == 0:
        try:
            names_or_error = _shard_names(_parse_metadata(path, (path / METADATA_FILE).read_bytes()))
        except (OSError, CheckpointError) as err:
            names_or_error = f"rank 0: reading back the shard list of checkpoint {path} failed: {err}"
    names_or_error = _gather(names_or_error)[0]  # every rank takes part, also after an error
    if isinstance(names_or_error, str):
        raise CheckpointError(names_or_error)
    return names_or_error


def _share_of(name: str, index: int, world_size: int) -> int:
    """The rank that hashes shard `name`: the rank that wrote it when its name says so (and that
    rank exists now), else round-robin over the sorted shard list."""
    match = _RANK_PREFIX.match(name)
    if match and int(match.group(1)) < world_size:
        return int(match.group(1))
    return index % world_size


def _gather(value: Any) -> list[Any]:
    """Every rank's value, on every rank (just [value] without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
