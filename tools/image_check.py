"""The Docker image's build check: the stack loads, and a CPU image holds the CPU build of torch.

    python tools/image_check.py STACK     (cpu or cuda; the Dockerfile's build argument)

Imports torch, FBGEMM's kernels and TorchRec's training pipeline. A CUDA image is usually built on
a host without a GPU: should a CUDA library there fail to load for want of the NVIDIA driver
(libcuda), that is reported as a warning, not a failed build: the image is checked again where it
runs. Any other failure fails the build, with its error.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stack = args[0] if args else "cuda"
    import torch

    if stack == "cpu" and torch.version.cuda is not None:
        print(f"image check: STACK=cpu installed a CUDA build of torch ({torch.__version__})", file=sys.stderr)
        return 1
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: F401
    except (ImportError, OSError) as err:
        if stack != "cpu" and "libcuda" in str(err):
            print(f"image check: warning: the CUDA stack needs the NVIDIA driver to load, which this build host "
                  f"lacks ({err}); it is loaded where the image runs", file=sys.stderr)
            return 0
        raise
    print(f"image check: torch {torch.__version__}, fbgemm_gpu and torchrec import")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
