"""DESIGN.md's allowed imports, checked on the source: arrows point to what may be imported.

    training -> policies -> vla        training -> envs
    robots   -> policies -> vla        robots   -> envs (only the simulated robot)
    envs     -> nothing of ours        benchmarks, vla_cli -> anything
    training -> robots (only the remote-policy adapter, which scores a policy server
                        through robots.client)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"vla", "policies", "envs", "robots", "training", "benchmarks", "vla_cli"}
ALLOWED = {
    "vla": {"vla"},
    "policies": {"policies", "vla"},
    "envs": {"envs"},
    "training": {"training", "policies", "vla", "envs"},
    "robots": {"robots", "policies", "vla", "envs"},
}
# robots may reach envs only through the simulated robot, which wraps an environment.
ROBOTS_MODULES_ALLOWED_ENVS = {"robots/sim_robot.py"}
# training may reach robots only through the remote-policy adapter (`vla eval --policy ws://`),
# which drives a policy server with robots.client; robots never imports training (no circle).
TRAINING_MODULES_ALLOWED_ROBOTS = {"training/remote_policy.py"}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_design_allows(package):
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        allowed = set(ALLOWED[package])
        if package == "robots" and relative not in ROBOTS_MODULES_ALLOWED_ENVS:
            allowed.discard("envs")
        if package == "training" and relative in TRAINING_MODULES_ALLOWED_ROBOTS:
            allowed.add("robots")
        bad = _imported_packages(path) - allowed
        if bad:
            violations.append(f"{relative} imports {sorted(bad)}")
    assert not violations, "imports that DESIGN.md forbids:\n" + "\n".join(violations)


def test_importing_vla_pulls_in_no_simulator_ros_or_onnxruntime():
    code = ("import sys, vla; heavy = [m for m in ('mujoco', 'robosuite', 'libero', 'rclpy', "
            "'onnxruntime', 'envs', 'robots', 'training') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "[]"
