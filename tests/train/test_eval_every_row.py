"""Evaluation on several ranks scores every row of the split exactly once: the last round is padded
to full batches on every rank (DMP's all-to-all needs equal shapes) and the padding is left out of
the metrics. Two gloo ranks evaluating the same (DMP-sharded) model at batch sizes that leave a
partial round, and one larger than the split, give the single-rank metrics of the same model."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from recsearch.data import layout
from recsearch.data.loader import NpyBatchLoader
from recsearch.model.dlrm import table_rows
from recsearch.train import trainer
from recsearch.train.engine import make_engine
from tests.spawn import spawn_ranks
from tests.train.engines import engine_and_loader, small_config
from tests.train.test_trainer import VAL_ROWS

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

CPU = torch.device("cpu")
# 2048 val rows: 300 leaves a round of 248 rows (rank 1's batch all padding), 700 a round of one
# full and one 648-row batch plus an empty one, 4096 is more than the split (one rank has no row).
EVAL_BATCH_SIZES = (300, 700, 4096)


def _rank_evaluates(rank: int, data: str, store: str, out_file: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    try:
        cfg = small_config(Path(data), Path(out_file).parent / "run", "engine=pipeline")
        meta = layout.read_meta(data)
        rows = table_rows(meta.num_embeddings_per_feature, cfg.max_rows_per_table)
        train_loader = NpyBatchLoader(data, "train", cfg.hparams.batch_size, rank=rank, world_size=2,
                                      num_embeddings_per_feature=rows, meta=meta)
        engine = make_engine(cfg, rows, CPU, 2, train_loader)  # the seed's initial weights, sharded
        metrics = {}
        for batch_size in EVAL_BATCH_SIZES:
            loader = NpyBatchLoader(data, "val", batch_size, rank=rank, world_size=2, num_embeddings_per_feature=rows,
                                    meta=meta, pad_last_round=True)
            metrics[batch_size] = dataclasses.asdict(trainer.evaluate(engine.model, loader, CPU))
        if rank == 0:
            Path(out_file).write_text(json.dumps(metrics))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_score_every_val_row_once_as_one_rank_does(tmp_path, learnable_data):
    out_file = tmp_path / "two_ranks.json"
    spawn_ranks(_rank_evaluates, (str(learnable_data), str(tmp_path / "store"), str(out_file)))
    two_ranks = {int(b): m for b, m in json.loads(out_file.read_text()).items()}

    # The same initial model on one device (the engines start from the same weights for a seed).
    engine, _ = engine_and_loader(small_config(learnable_data, tmp_path / "one", "engine=single"), CPU)
    one_rank = trainer.evaluate(engine.model, NpyBatchLoader(learnable_data, "val", 256, pad_last_round=True), CPU)
    assert one_rank.rows == VAL_ROWS
    for batch_size in EVAL_BATCH_SIZES:
        got = two_ranks[batch_size]
        assert got["rows"] == VAL_ROWS, batch_size
        assert got["auc"] == pytest.approx(one_rank.auc, abs=1e-6), batch_size
        assert got["log_loss"] == pytest.approx(one_rank.log_loss, rel=1e-5), batch_size
        assert got["accuracy"] == pytest.approx(one_rank.accuracy, abs=1e-9), batch_size
    # Leaving out a single row moves the metrics by more than the tolerances: the comparison sees it.
    short = trainer.evaluate(engine.model, NpyBatchLoader(learnable_data, "val", 256, max_rows=VAL_ROWS - 1), CPU)
    assert abs(short.auc - one_rank.auc) > 1e-6 or abs(short.log_loss / one_rank.log_loss - 1) > 1e-5
