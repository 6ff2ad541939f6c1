"""Files that may live behind an fsspec URL (s3://, gs://, abfs://, hdfs://, file://, memory://).

A trial that runs as a cluster job may not see the search's directory: on Kubernetes without a
shared volume, or on Slurm nodes without the submit host's disk. Such a search keeps its journal
on local disk and exchanges each trial's files with the job through an fsspec URL (the
`runner.torchx.remote_dir` setting): the job reads its config and placement from the URL and
uploads its result.json and TensorBoard logs there; the search downloads them when the job ends.

Plain paths go through pathlib, so everything here also works without any URL. Protocols other
than file:// and memory:// need their fsspec backend installed (s3fs, gcsfs, adlfs, ...); a missing
one is a clear error naming the package.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class RemoteError(OSError):
    """A URL that cannot be read or written (unknown protocol, backend not installed, I/O)."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for 'proto://...' (an fsspec URL), False for a plain path."""
    return isinstance(location, str) and bool(_URL.match(location))


def join(base: str, *parts: str) -> str:
    """base/part/...; for a URL with '/' whatever the OS, else as a path."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _fs(url: str):  # -> (fsspec.AbstractFileSystem, path within it)
    try:
        from fsspec.core import url_to_fs
    except ImportError as err:  # pragma: no cover - fsspec is a dependency of torch and of ours
        raise RemoteError(f"{url}: reading URLs needs fsspec: pip install fsspec") from err
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise RemoteError(
            f"{url}: no fsspec backend for this URL ({err}); install the one for its protocol, "
            "e.g. s3fs for s3://, gcsfs for gs://, adlfs for abfs://"
        ) from err


def check_backend(url: str) -> None:
    """RemoteError when no fsspec backend serves `url`'s protocol (s3fs for s3://, ...): found
    before a run writes anything there, not at its first upload."""
    _fs(url)


def read_text(location: str | os.PathLike[str]) -> str:
    """The text of a file at a path or URL; FileNotFoundError if there is none."""
    if not is_url(location):
        return Path(location).read_text()
    fs, path = _fs(str(location))
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"{location} not found") from None
    except OSError as err:
        raise RemoteError(f"{location}: cannot read: {err}") from err


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file at a path or URL: the one atomic file writer of the package. Either way
    the bytes go to a temporary name beside the target first and are then moved over it, so a
    reader sees the old file or the new one, never a torn one; parent directories are created. A
    path's temporary file is fsynced before the rename. (On an object store the move is a copy
    and a delete, so the write costs twice the traffic; trial files are small.)"""
    if not is_url(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(_temp_name(path.name))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, path = _fs(str(location))
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/{_temp_name(name)}" if parent else _temp_name(name)
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise RemoteError(f"{location}: cannot write: {err}") from err


def _temp_name(name: str) -> str:
    """The hidden name `write_bytes` writes `name` under before moving it into place: unique to
    this process and thread (not mkstemp, whose 0600 mode would ignore the umask)."""
    return f".{name}.{os.getpid()}.{threading.get_ident()}.partial"


def write_text(location: str | os.PathLike[str], text: str) -> None:
    """write_bytes of the text, UTF-8."""
    write_bytes(location, text.encode())


def exists(location: str | os.PathLike[str]) -> bool:
    if not is_url(location):
        return Path(location).exists()
    fs, path = _fs(str(location))
    return bool(fs.exists(path))


def upload_tree(local_dir: str | os.PathLike[str], url: str) -> list[str]:
    """Copy every file under local_dir to url/<relative path>; returns the relative paths."""
    root = Path(local_dir)
    if not root.is_dir():
        return []
    fs, base = _fs(url)
    copied = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        target = f"{base.rstrip('/')}/{rel}"
        try:
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)
        except OSError as err:
            raise RemoteError(f"{url}/{rel}: cannot upload {path}: {err}") from err
        copied.append(rel)
    return copied


def download_tree(url: str, local_dir: str | os.PathLike[str]) -> list[str]:
    """Copy every file under url to local_dir/<relative path>; returns the relative paths (none if
    url holds nothing)."""
    fs, base = _fs(url)
    base = base.rstrip("/")
    try:
        found = fs.find(base)
    except FileNotFoundError:
        return []
    copied = []
    for remote in sorted(found):
        rel = remote[len(base) :].lstrip("/")
        if not rel:
            continue
        target = Path(local_dir, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(remote, str(target))
        except OSError as err:
            raise RemoteError(f"{url}/{rel}: cannot download: {err}") from err
        copied.append(rel)
    return copied
