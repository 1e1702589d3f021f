"""Where `vla train --dataset` finds its data: a local folder, or a hub repo id (and `--root`).

LeRobot names datasets by hub repo id (``lerobot/libero_object_image``) and keeps a local copy at
``root``: by default ``$HF_LEROBOT_HOME/<repo_id>``, or wherever ``--root`` says (LeRobot's own
``root`` argument: the dataset folder itself, the one holding ``meta/info.json``). This module
turns the two arguments into that one folder:

    resolve_dataset_root("outputs/demo/data", None)          -> outputs/demo/data
    resolve_dataset_root("lerobot/libero_object", "/d/lo")   -> /d/lo (a local copy)
    resolve_dataset_root("lerobot/libero_object", None)      -> $HF_LEROBOT_HOME/lerobot/libero_object

A repo id with no local copy is fetched with LeRobot's own downloader when the hub is reachable
(``HF_HUB_OFFLINE=0``); offline (`vla train`'s default) it is refused with the folder it looked in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The hub's repo id shape: OWNER/NAME, each of letters, digits, '-', '_' and '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class DatasetSourceError(ValueError):
    """--dataset / --root name no dataset that can be read."""


def is_repo_id(dataset: str) -> bool:
    return bool(_REPO_ID.match(dataset))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def default_root(repo_id: str) -> Path:
    """LeRobot's default local copy of `repo_id`: $HF_LEROBOT_HOME/<repo_id>."""
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / repo_id


def _has_info(folder: Path) -> bool:
    return (folder / "meta" / "info.json").is_file()


def resolve_dataset_root(dataset: str, root: str | Path | None = None, *, download=None) -> Path:
    """The local folder of --dataset (a folder, or a repo id) and --root; fetches when allowed.

    download(repo_id, root): fetches the dataset into `root` (default: LeRobot's
    `LeRobotDataset(repo_id, root=root)`, which pulls meta, data and videos from the hub).
    """
    local = Path(dataset).expanduser()
    if local.is_dir():
        if root is not None:
            raise DatasetSourceError(
                f"--root {str(root)!r} was given with --dataset {dataset!r}, a local folder; "
                "expected --root only with a hub repo id (OWNER/NAME), whose local copy it names")
        return local
    if not is_repo_id(dataset):
        raise DatasetSourceError(
            f"--dataset {dataset!r}: no such folder, and not a hub repo id; expected a LeRobot "
            "dataset folder (vla collect --out) or OWNER/NAME (with --root DIR for a local copy)")
    folder = Path(root).expanduser() if root is not None else default_root(dataset)
    if _has_info(folder):
        return folder
    where = f"--root {str(folder)!r}" if root is not None else f"LeRobot's cache {str(folder)!r}"
    if hub_offline():
        raise DatasetSourceError(
            f"--dataset {dataset!r}: no local copy in {where} (no meta/info.json there) and the hub "
            "is off (HF_HUB_OFFLINE=1, vla train's default); expected --root DIR holding the "
            "dataset, or HF_HUB_OFFLINE=0 to download it")
    try:
        (download or _lerobot_download)(dataset, folder)
    except Exception as error:  # the hub's errors are many (network, auth, missing repo)
        raise DatasetSourceError(
            f"--dataset {dataset!r}: could not download it into {where}: {type(error).__name__}: "
            f"{error}") from error
    if not _has_info(folder):
        raise DatasetSourceError(f"--dataset {dataset!r}: downloaded into {where}, but there is no "
                                 "meta/info.json: not a LeRobot v3 dataset")
    return folder


def _lerobot_download(repo_id: str, root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    LeRobotDataset(repo_id=repo_id, root=root, download_videos=True)
