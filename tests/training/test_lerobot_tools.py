"""LeRobot's own command-line tools run from this project's environment (.venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("tool", ["lerobot-train", "lerobot-eval"])
def test_lerobot_entry_points_import_and_parse_their_arguments(tool):
    """The console script's whole import chain loads (lerobot 0.4.4 is installed --no-deps, so a
    dependency it imports must be in the pinned set) and its argument parser answers --help."""
    result = subprocess.run([str(BIN / tool), "--help"], capture_output=True, text=True, timeout=240,
                            env={"PATH": str(BIN), "HF_HUB_OFFLINE": "1", "MUJOCO_GL": "egl"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"usage: {tool}" in result.stdout and "--policy" in result.stdout
