"""Training samples from a LeRobot-format dataset: one observation, a chunk of future actions.

The dataset is read with lerobot's ``LeRobotDataset`` (metadata, parquet columns, video
decoding). Two things are added on top:

- **Chunking.** Sample ``i`` pairs frame ``i``'s observation (n_obs_steps = 1) with actions
  ``i .. i + chunk_size - 1`` of the same episode. Past the episode's end the last action is
  repeated and ``action_is_pad`` is True there, so the loss can mask it::

      frame:        i   i+1  i+2 ... end | (past the end)
      action:       a_i a_i+1 ...    a_end | a_end a_end      <- repeated
      action_is_pad F   F    ...     F     | T     T

- **A decoded-frame cache.** Decoding two mp4 frames per sample costs more than a CPU training
  step of the small model, so every camera's frames are decoded once, in order, into a uint8
  memmap under ``<dataset>/.vla_cache/`` (built atomically; keyed by the dataset's content so
  a changed dataset rebuilds it). Later runs and DataLoader workers share it through the page
  cache.

- **Any dataset's schema.** Feature keys are read through a ``DatasetSchema``
  (training/dataset_schema.py: renames, cameras, sizes), so a dataset that `vla collect` did not
  write trains too; frames of any size are resized once, into the cache, to the model's
  ``image_size`` by the same resize the policy applies to camera frames at inference.

``validate_dataset_features`` checks the dataset against what a model config needs before any
training starts, naming the feature, what was found and what was expected.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.dataset_schema import DatasetSchema, DatasetSchemaError, infer_schema, read_info
from vla.features import ACTION, ACTION_IS_PAD, OBS_IMAGE_PREFIX, OBS_STATE, TASK


class DatasetMismatchError(DatasetSchemaError):
    """The dataset does not provide what the model config needs."""


@dataclass(frozen=True)
class DatasetRequirements:
    """What a model config needs from a dataset."""

    camera_names: tuple[str, ...]
    image_size: int
    state_dim: int
    action_dim: int


def load_lerobot_dataset(root: str | Path):
    """Opens a local LeRobot dataset (offline: nothing is fetched)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetMismatchError(
            f"dataset={str(root)!r} is not a LeRobot dataset: {info_path} does not exist"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend="torchcodec")


def validate_dataset_features(schema: DatasetSchema, num_tasks: int, needs: DatasetRequirements,
                              dataset_name: str = "dataset") -> None:
    """Raises DatasetMismatchError naming the first feature the model config needs and the dataset
    (read through ``schema``, renames applied) lacks or has at another size. Image sizes are free:
    frames are resized to ``needs.image_size``."""
    for camera in needs.camera_names:
        if camera not in schema.camera_names:
            raise DatasetMismatchError(
                f"{dataset_name} lacks feature {OBS_IMAGE_PREFIX + camera!r} (camera {camera!r}); found "
                f"cameras {list(schema.camera_names)}; the model config expects cameras "
                f"{list(needs.camera_names)} (vla train takes the dataset's cameras unless --set "
                f"camera_names names them; --rename OLD=NEW maps a dataset key onto a camera)"
            )
    for key, dim, found in ((OBS_STATE, needs.state_dim, schema.state_dim),
                            (ACTION, needs.action_dim, schema.action_dim)):
        if found != dim:
            source = schema.source_key(key)
            read_as = f" (read as {key!r})" if source != key else ""
            raise DatasetMismatchError(
                f"{dataset_name} feature {source!r}{read_as} has shape ({found},); the model config "
                f"expects ({dim},) (vla train takes the dataset's size unless --set names it)"
            )
    if num_tasks <= 0:
        raise DatasetMismatchError(f"{dataset_name} has an empty task list; expected >= 1 task")


class ChunkedLeRobotDataset(Dataset):
    """Items: images float32 (3, S, S) in [0, 1], state (S_dim,), action (H, A), pad mask (H,), task str."""

    def __init__(self, root: str | Path, needs: DatasetRequirements, chunk_size: int,
                 episodes: list[int] | None = None, progress: bool = True,
                 renames: dict[str, str] | None = None):
        if chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size}; expected a positive integer")
        self.root = Path(root)
        self.needs = needs
        self.chunk_size = chunk_size
        name = f"dataset {str(self.root)!r}"
        lerobot_dataset = load_lerobot_dataset(self.root)
        meta = lerobot_dataset.meta
        try:
            self.schema = infer_schema(read_info(self.root), renames, name)  # renames: dataset key -> model key
        except DatasetSchemaError as error:
            raise DatasetMismatchError(str(error)) from None
        validate_dataset_features(self.schema, len(meta.tasks), needs, name)
        self.fps = meta.fps
        self.meta = meta

        # Whole columns straight from Arrow: the numpy formatter converts row by row (~3 s per
        # column for 10k frames on this CPU), Arrow hands over the buffers in milliseconds.
        table = lerobot_dataset.hf_dataset.with_format("arrow")[:]
        self._episode_index = _column(table, "episode_index", np.int64)  # (N,)
        self._frame_index = _column(table, "frame_index", np.int64)  # (N,)
        self._state = _column(table, self.schema.state_key, np.float32, needs.state_dim)  # (N, S_dim)
        self._action = _column(table, self.schema.action_key, np.float32, needs.action_dim)  # (N, A)
        task_index = _column(table, "task_index", np.int64)  # (N,)
        task_names = {int(i): name for name, i in zip(meta.tasks.index, meta.tasks["task_index"])}
        self._task_index = task_index
        self._task_names = task_names
        if not np.all(np.diff(self._episode_index) >= 0):
            raise DatasetMismatchError(f"dataset {str(self.root)!r}: rows are not grouped by episode")

        # Episode boundaries: rows [start, end) belong to one episode (rows are stored in order).
        all_episodes, starts = np.unique(self._episode_index, return_index=True)
        ends = np.append(starts[1:], len(self._episode_index))
        self._episode_bounds = {int(e): (int(s), int(t)) for e, s, t in zip(all_episodes, starts, ends)}
        chosen = sorted(self._episode_bounds) if episodes is None else sorted(episodes)
        unknown = [e for e in chosen if e not in self._episode_bounds]
        if unknown:
            raise ValueError(f"episodes={unknown} not in dataset (it has {len(all_episodes)})")
        self.episodes = chosen
        self._rows = np.concatenate(
            [np.arange(*self._episode_bounds[e]) for e in chosen]
        ) if chosen else np.zeros(0, dtype=np.int64)  # (N_used,) row ids served by this view

        self._frames = {
            camera: _decoded_frames(lerobot_dataset, self.root, self.schema.camera(camera), needs.image_size,
                                    self._episode_bounds, table, progress)
            for camera in needs.camera_names
        }  # camera -> uint8 memmap (N, S, S, 3), S = needs.image_size

    def subset(self, episodes: list[int]) -> "ChunkedLeRobotDataset":
        """A view over some episodes, sharing arrays and frame caches (no reload, no copy)."""
        unknown = [e for e in episodes if e not in self._episode_bounds]
        if unknown:
            raise ValueError(f"episodes={unknown} not in dataset {str(self.root)!r}")
        view = copy.copy(self)
        view.episodes = sorted(episodes)
        view._rows = np.concatenate(
            [np.arange(*self._episode_bounds[e]) for e in view.episodes]
        ) if episodes else np.zeros(0, dtype=np.int64)
        return view

    @property
    def tasks(self) -> list[str]:
        return [self._task_names[i] for i in sorted(self._task_names)]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        row = int(self._rows[index])
        episode = int(self._episode_index[row])
        _, end = self._episode_bounds[episode]
        chunk_rows = np.arange(row, row + self.chunk_size)  # (H,)
        is_pad = chunk_rows >= end  # (H,)
        chunk_rows = np.minimum(chunk_rows, end - 1)  # repeat the last action past the end
        item = {
            OBS_STATE: torch.from_numpy(self._state[row].copy()),  # (S_dim,)
            ACTION: torch.from_numpy(self._action[chunk_rows]),  # (H, A)
            ACTION_IS_PAD: torch.from_numpy(is_pad),  # (H,)
            TASK: self._task_names[int(self._task_index[row])],
        }
        for camera, frames in self._frames.items():
            image = torch.from_numpy(np.array(frames[row]))  # (S, S, 3) uint8, copied off the memmap
            item[OBS_IMAGE_PREFIX + camera] = image.permute(2, 0, 1).float() / 255.0  # (3, S, S)
        return item


def _column(table, name: str, dtype, width: int | None = None) -> np.ndarray:
    """An Arrow table's column as numpy: (N,) for scalars, (N, width) for fixed-length vectors."""
    column = table.column(name).combine_chunks()
    if width is None:
        return column.to_numpy(zero_copy_only=False).astype(dtype)  # (N,)
    values = column.flatten().to_numpy(zero_copy_only=False)  # (N * width,) when rows are full
    if values.size != table.num_rows * width:
        raise DatasetMismatchError(
            f"column {name!r} holds {values.size} values for {table.num_rows} frames; "
            f"expected {width} per frame"
        )
    return values.reshape(table.num_rows, width).astype(dtype)  # (N, width)


def _cache_key(root: Path, source_key: str, image_size: int) -> str:
    """Changes whenever the dataset's content or the stored size changes (info + episodes metadata)."""
    digest = hashlib.sha256()
    digest.update((root / "meta" / "info.json").read_bytes())
    for path in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
    digest.update(source_key.encode())
    digest.update(str(image_size).encode())
    return digest.hexdigest()[:16]


def _to_model_size(frames: torch.Tensor, image_size: int, source_key: str) -> np.ndarray:
    """float (T, 3, H, W) in [0, 1] -> uint8 (T, S, S, 3), resized as the policy resizes camera frames."""
    if tuple(frames.shape[-2:]) != (image_size, image_size):
        from policies.transforms import ImagesToModel

        frames = ImagesToModel((), image_size).convert(source_key, frames)  # (T, 3, S, S)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _decoded_frames(lerobot_dataset, root: Path, camera, image_size: int,
                    episode_bounds: dict[int, tuple[int, int]], table, progress: bool) -> np.memmap:
    """All frames of one camera (a CameraFeature) as a uint8 (N, S, S, 3) memmap at the model's
    size, decoded once and cached."""
    total = max(end for _, end in episode_bounds.values())
    cache_dir = root / ".vla_cache"
    cache_dir.mkdir(exist_ok=True)
    stem = camera.source_key.replace(".", "_").replace("/", "_")
    path = cache_dir / f"{stem}_{_cache_key(root, camera.source_key, image_size)}.u8"
    shape = (total, image_size, image_size, 3)
    if path.is_file() and path.stat().st_size == int(np.prod(shape)):
        return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)

    from tqdm.auto import tqdm

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    frames = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
    fps = lerobot_dataset.meta.fps
    images = None if camera.dtype == "video" else table.column(camera.source_key)
    if images is None:
        from lerobot.datasets.video_utils import decode_video_frames
    for episode, (start, end) in tqdm(sorted(episode_bounds.items()), disable=not progress,
                                      desc=f"decoding {camera.source_key}", unit="episode"):
        if images is None:
            info = lerobot_dataset.meta.episodes[episode]
            offset = info[f"videos/{camera.source_key}/from_timestamp"]
            timestamps = [offset + j / fps for j in range(end - start)]
            video_path = root / lerobot_dataset.meta.get_video_file_path(episode, camera.source_key)
            decoded = decode_video_frames(video_path, timestamps, 1e-4, "torchcodec")  # (T, 3, H, W)
        else:
            decoded = _decode_image_rows(images, start, end, root)  # (T, 3, H, W)
        frames[start:end] = _to_model_size(decoded, image_size, camera.source_key)
    frames.flush()
    del frames
    os.replace(tmp, path)  # atomic: readers only ever see a complete cache
    for stale in cache_dir.glob(f"{stem}_*.u8"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def _decode_image_rows(column, start: int, end: int, root: Path) -> torch.Tensor:
    """Rows [start, end) of an ``image`` feature (LeRobot stores {bytes, path} per row) -> float
    (T, 3, H, W) in [0, 1]."""
    import io

    from PIL import Image

    decoded = []
    for cell in column.slice(start, end - start).to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data:
            image = Image.open(io.BytesIO(data))
        elif isinstance(cell, dict) and cell.get("path"):
            image = Image.open(root / cell["path"])
        else:
            raise DatasetMismatchError(f"dataset {str(root)!r}: an image cell holds neither bytes nor a path")
        decoded.append(torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1))  # (3, H, W)
    return torch.stack(decoded).float() / 255.0


def dataset_stats(dataset: ChunkedLeRobotDataset) -> dict[str, dict[str, np.ndarray]]:
    """Normalization statistics of state and action over the used episodes (LeRobot's names)."""
    rows = dataset._rows
    stats = {}
    for key, values in ((OBS_STATE, dataset._state[rows]), (ACTION, dataset._action[rows])):
        stats[key] = {
            "mean": values.mean(0),
            "std": values.std(0),
            "min": values.min(0),
            "max": values.max(0),
            "q01": np.quantile(values, 0.01, axis=0),
            "q99": np.quantile(values, 0.99, axis=0),
            "count": np.array([len(values)]),
        }
    return stats


def split_episodes(episodes: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Held-out validation episodes (none when the dataset is too small to spare any)."""
    n_val = int(round(len(episodes) * val_fraction))
    if n_val == 0 or len(episodes) - n_val < 1:
        return list(episodes), []
    rng = np.random.default_rng(seed)
    shuffled = list(rng.permutation(episodes))
    return sorted(int(e) for e in shuffled[n_val:]), sorted(int(e) for e in shuffled[:n_val])


def collate(items: list[dict]) -> dict:
    """Stacks tensors; keeps the instruction strings as a list (tokenized by the policy transforms)."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = values if isinstance(values[0], str) else torch.stack(values)
    return batch


def describe(dataset: ChunkedLeRobotDataset) -> dict:
    return {
        "root": str(dataset.root.resolve()),
        "episodes": len(dataset.episodes),
        "frames": len(dataset),
        "fps": dataset.fps,
        "tasks": dataset.tasks,
        "features": dataset.schema.describe(),  # which dataset key each model input was read from
    }
