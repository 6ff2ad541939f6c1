"""Shared fixtures: tiny datasets in the npy layout, written directly with numpy."""

from pathlib import Path

import numpy as np
import pytest

from recsearch.data import layout

# ../shared/data beside the checkout: small real Criteo samples (see SOURCES.md there).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KAGGLE_SAMPLE = SHARED_DATA / "criteo_kaggle_sample100_paddlerec.tsv"


def write_dataset(
    root: Path,
    day_rows: tuple[int, ...] = (50, 40, 30),
    num_embeddings: int = 97,
    multi_hot_sizes: tuple[int, ...] | None = None,
    seed: int = 0,
) -> layout.DatasetMeta:
    """Rows whose values encode their position: dense[:, 0] is the row's global index. Ids are
    raw (up to 10x num_embeddings, like unhashed Criteo ids), so readers hash them to
    num_embeddings; meta records their true range."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    first = 0
    for day, rows in enumerate(day_rows):
        dense = rng.random((rows, 13), dtype=np.float32)
        dense[:, 0] = np.arange(first, first + rows)
        sparse = rng.integers(0, 10 * num_embeddings, (rows, 26)).astype(np.int32)
        labels = rng.integers(0, 2, (rows, 1)).astype(np.int32)
        np.save(layout.day_file(root, day, "dense"), dense)
        np.save(layout.day_file(root, day, "sparse"), sparse)
        np.save(layout.day_file(root, day, "labels"), labels)
        if multi_hot_sizes is not None:
            multi = rng.integers(0, 10 * num_embeddings, (rows, sum(multi_hot_sizes))).astype(np.int32)
            offsets = np.concatenate([[0], np.cumsum(multi_hot_sizes)[:-1]])
            multi[:, offsets] = sparse
            np.save(layout.day_file(root, day, "sparse_multi_hot"), multi)
        first += rows
    meta = layout.DatasetMeta(
        source="synthetic",
        day_rows=tuple(day_rows),
        num_embeddings_per_feature=(10 * num_embeddings,) * 26,
        multi_hot_sizes=multi_hot_sizes,
    )
    layout.write_meta(root, meta)
    return meta


@pytest.fixture
def tiny_dataset(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    return root


@pytest.fixture(autouse=True)
def _signal_handlers_as_they_were():
    """A test that installs SIGINT/SIGTERM handlers (torchx's local scheduler does, when created)
    does not leave them to the tests after it."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        if handler is not None:
            signal.signal(sig, handler)
