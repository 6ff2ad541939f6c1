"""recsearch.remote: files at paths or fsspec URLs (memory:// here; file:// in the torchx test)."""

import importlib.util
import os
import uuid

import pytest

from recsearch import config, remote
from recsearch.config import ConfigError


@pytest.fixture()
def url():
    return f"memory://recsearch-test-{uuid.uuid4().hex}"


def test_is_url_and_join():
    assert remote.is_url("s3://bucket/x") and remote.is_url("file:///tmp/x") and remote.is_url("memory://a")
    assert not remote.is_url("/tmp/x") and not remote.is_url("runs/search") and not remote.is_url("C:/x")
    assert remote.join("s3://b/runs/", "trials", "/3/") == "s3://b/runs/trials/3"
    assert remote.join("/tmp/runs", "trials", "3") == "/tmp/runs/trials/3"


def test_text_round_trip_at_urls_and_paths(url, tmp_path):
    remote.write_text(f"{url}/a/b/result.json", '{"auc": 0.8}')
    assert remote.read_text(f"{url}/a/b/result.json") == '{"auc": 0.8}'
    assert remote.exists(f"{url}/a/b/result.json") and not remote.exists(f"{url}/a/b/other.json")
    remote.write_text(f"{url}/a/b/result.json", "second")  # overwrite in place
    assert remote.read_text(f"{url}/a/b/result.json") == "second"
    import fsspec

    fs = fsspec.filesystem("memory")
    listed = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/a/b", detail=False)]
    assert listed == ["result.json"]  # no temp object left behind at a URL either
    remote.write_text(tmp_path / "d" / "f.txt", "local")
    assert (tmp_path / "d" / "f.txt").read_text() == "local" and remote.read_text(tmp_path / "d" / "f.txt") == "local"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.txt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "d" / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # like any other file
    with pytest.raises(FileNotFoundError, match="not found"):
        remote.read_text(f"{url}/missing.json")


def test_trees_upload_and_download_with_their_layout(url, tmp_path):
    src = tmp_path / "src"
    (src / "tb" / "run").mkdir(parents=True)
    (src / "tb" / "run" / "events.1").write_bytes(b"\x00\x01binary")
    (src / "result.json").write_text("{}")
    assert remote.upload_tree(src, f"{url}/out") == ["result.json", "tb/run/events.1"]
    dst = tmp_path / "dst"
    assert remote.download_tree(f"{url}/out", dst) == ["result.json", "tb/run/events.1"]
    assert (dst / "tb" / "run" / "events.1").read_bytes() == b"\x00\x01binary"
    assert remote.download_tree(f"{url}/nothing-here", tmp_path / "none") == []
    assert remote.upload_tree(tmp_path / "no-such-dir", f"{url}/x") == []


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs installed: s3:// has a backend")
def test_unknown_protocols_and_missing_backends_are_clear_errors():
    with pytest.raises(remote.RemoteError, match="no fsspec backend.*nosuch"):
        remote.read_text("nosuch://bucket/x.yaml")
    with pytest.raises(remote.RemoteError, match="s3fs"):  # s3fs is not a dependency
        remote.write_text("s3://bucket/x.json", "{}")


def test_configs_load_from_urls_with_the_same_errors(url):
    remote.write_text(f"{url}/train.yaml", "data_dir: /data\nepochs: 2\n")
    assert config.load_yaml(f"{url}/train.yaml") == {"data_dir": "/data", "epochs": 2}
    with pytest.raises(ConfigError, match="file not found"):
        config.load_yaml(f"{url}/nope.yaml")
    remote.write_text(f"{url}/bad.yaml", "- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load_yaml(f"{url}/bad.yaml")


def test_a_failed_url_write_leaves_no_temp_object(url, monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")

    def refuse(*args, **kwargs):
        raise OSError("quota exceeded")

    monkeypatch.setattr(type(fs), "mv", refuse)
    with pytest.raises(remote.RemoteError, match="cannot write: quota exceeded"):
        remote.write_text(f"{url}/dir/result.json", "{}")
    assert fs.ls(f"{url}/dir", detail=False) == []  # neither the file nor its temp object
