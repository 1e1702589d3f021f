"""What a LeRobot v3 dataset provides, read from its ``meta/info.json``, and how it maps onto a
model config: cameras, image size, state and action sizes, fps.

Any LeRobot dataset can be trained on (`vla train --dataset DIR`), not only one that `vla
collect` wrote: the cameras, state and action sizes come from the dataset, images of any size
are resized to the preset's ``image_size`` (the same bilinear, antialiased resize the policy
applies to camera frames at inference), and feature keys that do not follow LeRobot's names
are renamed with ``--rename OLD=NEW`` (``--rename image=observation.images.image --rename
actions=action`` for a dataset in openpi's LIBERO layout). What cannot be mapped is refused
before training, naming the feature.

Torch-free: ``vla train`` reads it before anything heavy is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vla.features import ACTION, OBS_IMAGE_PREFIX, OBS_STATE

IMAGE_DTYPES = ("video", "image")


class DatasetSchemaError(ValueError):
    """The dataset's features cannot be mapped onto what the model reads."""


@dataclass(frozen=True)
class CameraFeature:
    name: str  # the model's camera name: the key after OBS_IMAGE_PREFIX, once renamed
    source_key: str  # the dataset's own key
    dtype: str  # "video" (mp4 files) or "image" (encoded in the parquet rows)
    height: int
    width: int


@dataclass(frozen=True)
class DatasetSchema:
    """A dataset's features in the model's terms, each with the dataset key it is read from."""

    cameras: tuple[CameraFeature, ...]
    state_dim: int
    action_dim: int
    fps: int
    state_key: str
    action_key: str

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(camera.name for camera in self.cameras)

    def source_key(self, model_key: str) -> str:
        """The dataset's key of a model key (observation.images.<name>, observation.state, action)."""
        if model_key == OBS_STATE:
            return self.state_key
        if model_key == ACTION:
            return self.action_key
        for camera in self.cameras:
            if model_key == OBS_IMAGE_PREFIX + camera.name:
                return camera.source_key
        raise KeyError(model_key)

    def camera(self, name: str) -> CameraFeature:
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise KeyError(name)

    def describe(self) -> dict:
        return {
            "cameras": {c.name: {"key": c.source_key, "dtype": c.dtype, "height": c.height, "width": c.width}
                        for c in self.cameras},
            "state": {"key": self.state_key, "dim": self.state_dim},
            "action": {"key": self.action_key, "dim": self.action_dim},
            "fps": self.fps,
        }


def parse_renames(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> {OLD: NEW}; each dataset key renamed at most once, no two onto one."""
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise DatasetSchemaError(f"--rename {pair!r}: expected OLD=NEW, e.g. "
                                     f"--rename image=observation.images.image")
        if old in renames:
            raise DatasetSchemaError(f"--rename {pair!r}: {old!r} is already renamed to {renames[old]!r}")
        if new in renames.values():
            raise DatasetSchemaError(f"--rename {pair!r}: another feature is already renamed to {new!r}")
        renames[old] = new
    return renames


def read_info(root: str | Path) -> dict:
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        raise DatasetSchemaError(f"dataset={str(root)!r} is not a LeRobot dataset: {path} does not exist")
    return json.loads(path.read_text())


def _hw(key: str, shape: list[int], names: list[str] | None) -> tuple[int, int]:
    """(height, width) of an image feature stored as (H, W, C) or (C, H, W)."""
    if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
        raise DatasetSchemaError(f"feature {key!r} has shape {tuple(shape)}; expected an RGB image "
                                 f"(H, W, 3) or (3, H, W)")
    if names and len(names) == 3 and names[0] in ("channels", "channel", "c"):
        return int(shape[1]), int(shape[2])
    if shape[-1] == 3:
        return int(shape[0]), int(shape[1])
    return int(shape[1]), int(shape[2])


def infer_schema(info: dict, renames: dict[str, str] | None = None, dataset_name: str = "dataset") -> DatasetSchema:
    """The dataset's cameras, state and action, with ``renames`` applied (dataset key -> model key)."""
    renames = dict(renames or {})
    features: dict = info.get("features") or {}
    unknown = sorted(old for old in renames if old not in features)
    if unknown:
        raise DatasetSchemaError(f"--rename {unknown[0]}=...: {dataset_name} has no feature {unknown[0]!r}; "
                                 f"its features are {sorted(features)}")
    by_model_key: dict[str, str] = {}
    for key in features:
        model_key = renames.get(key, key)
        if model_key in by_model_key:
            raise DatasetSchemaError(f"{dataset_name}: features {by_model_key[model_key]!r} and {key!r} would both "
                                     f"be read as {model_key!r}; rename one of them")
        by_model_key[model_key] = key

    cameras, loose_images = [], []
    for model_key, key in by_model_key.items():
        feature = features[key]
        if feature.get("dtype") not in IMAGE_DTYPES:
            continue
        if not model_key.startswith(OBS_IMAGE_PREFIX):
            loose_images.append(key)
            continue
        height, width = _hw(key, list(feature["shape"]), feature.get("names"))
        cameras.append(CameraFeature(model_key[len(OBS_IMAGE_PREFIX):], key, feature["dtype"], height, width))
    if loose_images:
        key = loose_images[0]
        raise DatasetSchemaError(
            f"{dataset_name} feature {key!r} is an image but not a camera the model can read (camera "
            f"features are named {OBS_IMAGE_PREFIX}<camera>); pass --rename {key}={OBS_IMAGE_PREFIX}{key.split('.')[-1]}"
        )
    if not cameras:
        raise DatasetSchemaError(f"{dataset_name} has no camera feature (dtype video or image); its features "
                                 f"are {sorted(features)}")

    dims = {}
    for model_key in (OBS_STATE, ACTION):
        if model_key not in by_model_key:
            candidates = sorted(k for k, f in features.items() if f.get("dtype") in ("float32", "float64")
                                and len(f.get("shape", ())) == 1 and renames.get(k, k) not in (OBS_STATE, ACTION))
            raise DatasetSchemaError(
                f"{dataset_name} lacks feature {model_key!r}; its vector features are {candidates}; "
                f"pass --rename NAME={model_key} for the one that holds it"
            )
        key = by_model_key[model_key]
        shape = tuple(features[key].get("shape", ()))
        if len(shape) != 1 or shape[0] < 1:
            raise DatasetSchemaError(f"{dataset_name} feature {key!r} (read as {model_key!r}) has shape {shape}; "
                                     f"expected a vector (D,)")
        dims[model_key] = int(shape[0])
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise DatasetSchemaError(f"{dataset_name} meta/info.json has fps={fps!r}; expected a positive number")
    return DatasetSchema(cameras=tuple(cameras), state_dim=dims[OBS_STATE], action_dim=dims[ACTION],
                         fps=int(fps), state_key=by_model_key[OBS_STATE], action_key=by_model_key[ACTION])


def fit_config_fields(schema: DatasetSchema, preset_cameras: tuple[str, ...], preset_state_dim: int,
                      preset_action_dim: int, explicit: set[str] | frozenset[str] = frozenset()) -> dict:
    """The model config fields this dataset decides, as overrides of the preset: the cameras (the
    preset's, in its order, when the dataset has all of them; else the dataset's), the state and
    action sizes. Fields in ``explicit`` (set by `--set`) are left to the command. The image size
    stays the preset's: frames are resized to it."""
    fields: dict = {}
    if "camera_names" not in explicit and not set(preset_cameras) <= set(schema.camera_names):
        fields["camera_names"] = schema.camera_names
    if "state_dim" not in explicit and schema.state_dim != preset_state_dim:
        fields["state_dim"] = schema.state_dim
    if "action_dim" not in explicit and schema.action_dim != preset_action_dim:
        fields["action_dim"] = schema.action_dim
    return fields


def describe_fit(schema: DatasetSchema, camera_names: tuple[str, ...], image_size: int) -> str:
    """One line for the user: what is read from where, at which size."""
    cameras = ", ".join(
        f"{c.name} <- {c.source_key} ({c.height}x{c.width}"
        + (f" -> {image_size}x{image_size})" if (c.height, c.width) != (image_size, image_size) else ")")
        for c in schema.cameras if c.name in camera_names)
    unused = [c.name for c in schema.cameras if c.name not in camera_names]
    return (f"cameras {cameras}{'; unused: ' + ', '.join(unused) if unused else ''}; "
            f"state {schema.state_dim} <- {schema.state_key}; action {schema.action_dim} <- "
            f"{schema.action_key}; {schema.fps} fps")
