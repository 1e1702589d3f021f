"""What machine a benchmark ran on: recorded in every benchmark's JSON next to its numbers."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(*packages: str) -> dict[str, Any]:
    """Platform, CPU, load average (timings on a loaded machine are not comparable) and the
    versions of ``packages`` (e.g. "torch", "mujoco"), imported lazily."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "load_avg": list(os.getloadavg()),
    }
    for name in packages:
        info[name] = importlib.import_module(name).__version__
    if "torch" in packages:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    if "mujoco" in packages:
        info["mujoco_gl"] = os.environ.get("MUJOCO_GL")
    return info
