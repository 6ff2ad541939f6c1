"""Watching the ops a training step dispatches: a counter (result.json's ops per step) and a guard
that fails on any op that makes the host wait for the device (tests; debugging).

Both are TorchDispatchModes: they see every aten and FBGEMM op that reaches the dispatcher from
Python or from autograd's backward, but not the ops a replayed CUDA graph runs (a replay is one
launch, which is the point).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result the host must read before it can go on: on a GPU each one stalls the host
# until the device has caught up (an .item(), a data-dependent output shape, a comparison that
# returns a Python bool).
HOST_SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",  # .item(), float(t), int(t), bool(t)
        "aten.item.default",
        "aten.is_nonzero.default",
        "aten.equal.default",
        "aten.nonzero.default",
        "aten.nonzero_static.default",
        "aten.masked_select.default",
        "aten.unique_dim.default",
        "aten._unique2.default",
        "aten.unique_consecutive.default",
        "aten.repeat_interleave.Tensor",
        "aten._assert_async.default",
        "aten._assert_async.msg",
        "aten.tolist.default",
    }
)


class OpCounter(TorchDispatchMode):
    """Counts dispatched ops by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class HostSyncError(RuntimeError):
    """An op inside a step would make the host wait for the device."""


class HostSyncGuard(TorchDispatchMode):
    """Raises HostSyncError on any op of HOST_SYNC_OPS, except on tensors that live on the host
    by design (`host_tensors`, matched by storage: e.g. FBGEMM's CPU-side iteration counter and
    learning-rate scalar, which are host values on a GPU too)."""

    def __init__(self, host_tensors: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._allowed = {t.untyped_storage().data_ptr() for t in host_tensors}
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func)
        if name in HOST_SYNC_OPS:
            first = args[0] if args else None
            allowed = isinstance(first, torch.Tensor) and first.untyped_storage().data_ptr() in self._allowed
            if not allowed:
                self.seen.append(name)
                raise HostSyncError(f"{name} inside a training step makes the host wait for the device")
        return func(*args, **(kwargs or {}))
