"""How many CPUs this process may use: the default worker count of `data preprocess` and `data synth`.

os.cpu_count() is the host's cores; a container or a job scheduler gives a process fewer, through
its CPU affinity (taskset, cpusets) or a CFS quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`). Starting a worker per host core under a 2-CPU quota only adds contention.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity mask, else os.cpu_count()), capped by the CFS
    quota of its cgroup, rounded up (a quota of 1.5 CPUs gives 2); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time per period the cgroup at cgroup_root allows (v2 `cpu.max`, else v1
    `cpu/cpu.cfs_quota_us` / `cpu/cpu.cfs_period_us` or the same files at the root), or None when
    there is no limit or no readable file."""
    v2 = _read(cgroup_root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ratio(parts[0], parts[1])
        return None
    for folder in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)  # v1 says "no limit" with a quota of -1
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
