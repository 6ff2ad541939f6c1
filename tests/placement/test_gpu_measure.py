"""Placement measurement on CUDA: one device's fused FBGEMM kernel timed with CUDA events.
`pytest -m gpu` on a GPU machine (tools/gpu_check.sh runs it); skipped without CUDA."""

import pytest
import torch

from recsearch.placement import hardware
from recsearch.placement import measure as M
from recsearch.types import TableSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_event_timing_is_positive_and_grows_with_the_device_work():
    small = [TableSpec("s", 1_000, 16, 1.0)]
    big = [TableSpec(f"b{i}", 200_000, 128, 20.0) for i in range(16)]  # ~40,000x the lookup bytes
    # the least of three interleaved measurements (another process on the GPU only adds time)
    runs = [(M.time_device_kernel(small, 65536, "cuda", "rowwise_adagrad", warmup=2, iters=5),
             M.time_device_kernel(big, 65536, "cuda", "rowwise_adagrad", warmup=2, iters=5)) for _ in range(3)]  # fmt: skip
    fs, bs = min(r[0].fwd_ms for r in runs), min(r[0].bwd_ms for r in runs)
    fb, bb = min(r[1].fwd_ms for r in runs), min(r[1].bwd_ms for r in runs)
    assert 0 < fs < 5 and 0 < bs < 5, (fs, bs)  # a small kernel: well under a few ms on any GPU
    assert fb > 5 * fs and bb > 5 * bs, (fs, bs, fb, bb)
    assert all(len(r[1].fwd_samples) == len(r[1].bwd_samples) == 5 for r in runs)  # the timed calls only
    info = hardware.hardware_info("cuda")
    assert info["device"] == "cuda" and info["name"] == torch.cuda.get_device_name(0)
