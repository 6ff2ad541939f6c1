"""Which hardware a cost was measured on: a description (`hardware_info`) and the string that
makes samples comparable (`hardware_string`: samples with equal strings were timed on the same
kind of device, software and clock).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch


def hardware_info(device: torch.device | str = "cpu", threads: int | None = 1) -> dict[str, Any]:
    import fbgemm_gpu

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model()
    return {
        "device": device.type,
        "name": name,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__.split("+")[0],
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
        "host": platform.node(),
    }


def hardware_string(
    device: torch.device | str = "cpu", threads: int | None = 1, clock: str = "wall"
) -> str:
    """e.g. 'cpu:AMD EPYC|cpus=2|threads=1|torch=2.13.0|fbgemm_gpu=1.8.0': samples with equal
    strings are comparable. CPU times taken with the thread clock say so ('|clock=thread'), as
    they are a different quantity from wall times under load."""
    h = hardware_info(device, threads)
    tail = "|clock=thread" if clock == "thread" and h["device"] == "cpu" else ""
    return (
        f"{h['device']}:{h['name']}|cpus={h['cpu_count']}|threads={h['threads']}"
        f"|torch={h['torch']}|fbgemm_gpu={h['fbgemm_gpu']}{tail}"
    )


def device_name_of(hardware: str) -> str:
    """The device name a hardware string records ('NVIDIA H100 80GB HBM3', 'AMD EPYC'); '' if
    it records none."""
    head = hardware.split("|", 1)[0]
    return head.split(":", 1)[1] if ":" in head else ""


def local_device_name(device: str) -> str | None:
    """This machine's name for a compute device kind ('cpu': the CPU model; 'cuda': the first
    GPU's name), None when it has no such device (e.g. planning for GPUs on a CPU host)."""
    if device == "cuda":
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return _cpu_model() if device == "cpu" else None


def other_hardware_note(trained_on: str, device: str) -> str | None:
    """A line saying that a cost net trained on `trained_on` (a hardware string) is used on a
    machine whose `device` is another model; None when they match, when either is unknown, or
    when this machine has no such device."""
    theirs, mine = device_name_of(trained_on), local_device_name(device)
    if not theirs or not mine or theirs == mine:
        return None
    return (
        f"the shipped {device} cost net was measured on {theirs!r}; this machine's {device} is "
        f"{mine!r}: the learned placer's estimates come from other hardware (their ranking of "
        "placements usually carries over, their milliseconds do not). For placements judged by "
        "this hardware, measure samples here and train a net and policy on them "
        "(docs/PLACEMENT.md, Reproduce)"
    )


def clock_of(hardware: str) -> str:
    """The CPU clock samples with this hardware string were timed with ('wall' unless marked)."""
    return "thread" if "|clock=thread" in hardware else "wall"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
