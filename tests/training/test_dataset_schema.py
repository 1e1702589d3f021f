"""Any LeRobot dataset in `vla train`: the schema is read from meta/info.json, keys are renamed with
--rename, images of any size are resized to the preset's, and what cannot be mapped is refused
naming the feature. Two synthetic datasets are written with LeRobot's own writer in real schemas:
the community LIBERO conversion in openpi's layout (cameras `image` and `wrist_image` at 256 px,
8-D `state`, 7-D `actions`, 10 fps) and a low-cost 6-DoF arm (one `front` camera at 480x640,
6-D joint state and action, 30 fps, LeRobot's own key names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.dataset import ChunkedLeRobotDataset, DatasetMismatchError, DatasetRequirements, load_lerobot_dataset
from training.dataset_schema import (
    DatasetSchemaError,
    fit_config_fields,
    infer_schema,
    parse_renames,
)
from vla_cli import main as vla_main

LIBERO_RENAMES = ["image=observation.images.image", "wrist_image=observation.images.wrist_image",
                  "state=observation.state", "actions=action"]


def _frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): smooth moving gradients (codec friendly) that differ per episode."""
    yy, xx = np.mgrid[0:height, 0:width]
    t = np.arange(length)[:, None, None]
    frames = np.empty((length, height, width, 3), dtype=np.uint8)
    frames[..., 0] = (xx * 255 // width + t * 5 + seed * 40) % 256
    frames[..., 1] = (yy * 255 // height + t * 3) % 256
    frames[..., 2] = (seed * 70) % 256
    return frames


def _write(root: Path, fps: int, features: dict, episodes: list[tuple[str, int]], frame_fn) -> Path:
    """A dataset written with LeRobot's own writer; episodes are (task, length)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset.create(repo_id=f"local/{root.name}", fps=fps, features=features, root=root,
                                    use_videos=True, vcodec="libsvtav1")
    for index, (task, length) in enumerate(episodes):
        for t in range(length):
            dataset.add_frame({**frame_fn(index, t, length), "task": task})
        dataset.save_episode()
    dataset.finalize()
    return root


def write_libero_openpi_layout(root: Path) -> Path:
    size, length = 256, 12
    features = {
        "image": {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channel"]},
        "wrist_image": {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channel"]},
        "state": {"dtype": "float32", "shape": (8,), "names": ["state"]},
        "actions": {"dtype": "float32", "shape": (7,), "names": ["actions"]},
    }
    cache = {}

    def frame(index, t, n):
        if index not in cache:
            cache[index] = (_frames(n, size, size, index), _frames(n, size, size, index + 5))
        sign = 1.0 if index % 2 == 0 else -1.0
        return {"image": cache[index][0][t], "wrist_image": cache[index][1][t],
                "state": np.full(8, 0.01 * t, dtype=np.float32),
                "actions": np.array([0.5 * sign, 0, 0, 0, 0, 0, -1.0 if t < n // 2 else 1.0], dtype=np.float32)}

    tasks = ["put the bowl on the plate", "put the bowl on the stove"]
    return _write(root, 10, features, [(tasks[i % 2], length) for i in range(4)], frame)


def write_six_dof_arm(root: Path) -> Path:
    height, width, length = 480, 640, 10
    joints = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    features = {
        "observation.images.front": {"dtype": "video", "shape": (height, width, 3),
                                     "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": joints},
        "action": {"dtype": "float32", "shape": (6,), "names": joints},
    }
    cache = {}

    def frame(index, t, n):
        if index not in cache:
            cache[index] = _frames(n, height, width, index)
        joint = np.linspace(-1, 1, 6, dtype=np.float32) * (t / n)
        return {"observation.images.front": cache[index][t], "observation.state": joint,
                "action": joint + np.float32(0.05)}

    return _write(root, 30, features, [("pick up the red cube", length)] * 3, frame)


@pytest.fixture(scope="module")
def libero_openpi(tmp_path_factory) -> Path:
    return write_libero_openpi_layout(tmp_path_factory.mktemp("schema") / "libero_openpi")


@pytest.fixture(scope="module")
def six_dof(tmp_path_factory) -> Path:
    return write_six_dof_arm(tmp_path_factory.mktemp("schema") / "so_arm")


def _info(root: Path) -> dict:
    return json.loads((root / "meta" / "info.json").read_text())


# ------------------------------------------------------------------------ schema, no training


def test_schema_of_the_openpi_libero_layout_needs_renames_and_names_the_feature(libero_openpi):
    with pytest.raises(DatasetSchemaError, match=r"feature 'image' is an image.*--rename image=observation.images.image"):
        infer_schema(_info(libero_openpi))
    schema = infer_schema(_info(libero_openpi), parse_renames(LIBERO_RENAMES))
    assert schema.camera_names == ("image", "wrist_image")
    assert [(c.source_key, c.height, c.width) for c in schema.cameras] == [("image", 256, 256), ("wrist_image", 256, 256)]
    assert (schema.state_dim, schema.action_dim, schema.fps) == (8, 7, 10)
    assert (schema.state_key, schema.action_key) == ("state", "actions")


def test_schema_of_the_six_dof_arm_is_read_without_flags(six_dof):
    schema = infer_schema(_info(six_dof))
    assert schema.camera_names == ("front",)
    assert (schema.cameras[0].height, schema.cameras[0].width) == (480, 640)
    assert (schema.state_dim, schema.action_dim, schema.fps) == (6, 6, 30)


def test_fitting_keeps_the_presets_cameras_when_the_dataset_has_them():
    info = {"fps": 20, "features": {
        "observation.images.wrist": {"dtype": "video", "shape": [64, 64, 3]},
        "observation.images.agentview": {"dtype": "video", "shape": [64, 64, 3]},
        "observation.state": {"dtype": "float32", "shape": [8]},
        "action": {"dtype": "float32", "shape": [7]}}}
    schema = infer_schema(info)
    assert fit_config_fields(schema, ("agentview", "wrist"), 8, 7) == {}  # a vla collect dataset: nothing changes
    assert fit_config_fields(schema, ("front",), 6, 6) == {
        "camera_names": ("wrist", "agentview"), "state_dim": 8, "action_dim": 7}
    assert fit_config_fields(schema, ("front",), 6, 6, explicit={"camera_names", "state_dim"}) == {"action_dim": 7}


@pytest.mark.parametrize(("pairs", "message"), [
    (["image"], r"--rename 'image': expected OLD=NEW"),
    (["image=a", "image=b"], r"'image' is already renamed to 'a'"),
    (["a=x", "b=x"], r"already renamed to 'x'"),
])
def test_bad_renames_are_refused(pairs, message):
    with pytest.raises(DatasetSchemaError, match=message):
        parse_renames(pairs)


@pytest.mark.parametrize(("features", "renames", "message"), [
    ({"observation.images.a": {"dtype": "video", "shape": [8, 8, 3]}, "action": {"dtype": "float32", "shape": [7]}},
     {}, r"lacks feature 'observation.state'"),
    ({"observation.images.a": {"dtype": "video", "shape": [8, 8, 3]}, "observation.state": {"dtype": "float32", "shape": [8]},
      "actions": {"dtype": "float32", "shape": [7]}},
     {}, r"lacks feature 'action'; its vector features are \['actions'\]; pass --rename NAME=action"),
    ({"observation.images.a": {"dtype": "video", "shape": [8, 8, 3]}, "observation.state": {"dtype": "float32", "shape": [8]},
      "action": {"dtype": "float32", "shape": [7]}},
     {"nope": "action"}, r"has no feature 'nope'"),
    ({"observation.images.a": {"dtype": "video", "shape": [8, 8, 4]}, "observation.state": {"dtype": "float32", "shape": [8]},
      "action": {"dtype": "float32", "shape": [7]}},
     {}, r"'observation.images.a' has shape \(8, 8, 4\); expected an RGB image"),
    ({"observation.state": {"dtype": "float32", "shape": [8]}, "action": {"dtype": "float32", "shape": [7]}},
     {}, r"has no camera feature"),
    ({"observation.images.a": {"dtype": "video", "shape": [8, 8, 3]}, "observation.state": {"dtype": "float32", "shape": [8]},
      "action": {"dtype": "float32", "shape": [7]}, "observation.images.b": {"dtype": "video", "shape": [8, 8, 3]}},
     {"observation.images.b": "observation.images.a"}, r"would both be read as 'observation.images.a'"),
])
def test_unmappable_schemas_are_refused_naming_the_feature(features, renames, message):
    with pytest.raises(DatasetSchemaError, match=message):
        infer_schema({"fps": 10, "features": features}, renames)


# ------------------------------------------------------------------- samples and vla train


def test_frames_are_resized_as_the_policy_resizes_camera_frames(six_dof):
    from policies.transforms import ImagesToModel

    dataset = ChunkedLeRobotDataset(six_dof, DatasetRequirements(("front",), 32, 6, 6), chunk_size=4, progress=False)
    reference = load_lerobot_dataset(six_dof)
    for index in (0, 13, len(dataset) - 1):
        item = dataset[index]
        assert item["observation.images.front"].shape == (3, 32, 32)
        original = reference[index]["observation.images.front"]  # (3, 480, 640) float in [0, 1]
        expected = ImagesToModel(("front",), 32).convert("front", original)
        # one uint8 rounding step of the cache, nothing more
        assert (item["observation.images.front"] - expected).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(item["observation.state"], reference[index]["observation.state"])


def test_a_needed_camera_the_dataset_lacks_is_refused(six_dof):
    with pytest.raises(DatasetMismatchError, match=r"lacks feature 'observation.images.wrist'.*found cameras \['front'\]"):
        ChunkedLeRobotDataset(six_dof, DatasetRequirements(("front", "wrist"), 32, 6, 6), chunk_size=4, progress=False)


def _train(dataset: Path, out: Path, *extra: str) -> int:
    return vla_main(["train", "--preset", "tiny", "--dataset", str(dataset), "--out", str(out), "--steps", "3",
                     "--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "3", *extra])


def _policy_acts(run: Path, images: dict, state_dim: int, action_dim: int, task: str) -> None:
    from policies import VLAPolicy

    policy = VLAPolicy.from_checkpoint(run / "checkpoints" / "last", seed=0)
    obs = {**{f"observation.images.{k}": v for k, v in images.items()},
           "observation.state": np.zeros(state_dim, dtype=np.float32), "task": task}
    actions = np.asarray(policy.infer(obs)["actions"])  # (H, A)
    assert actions.shape[1:] == (action_dim,) and np.all(np.isfinite(actions))


def test_vla_train_fits_the_six_dof_arm_without_flags(six_dof, tmp_path, capsys):
    assert _train(six_dof, tmp_path / "run") == 0
    log = capsys.readouterr().err
    assert "front <- observation.images.front (480x640 -> 32x32)" in log
    config = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert (tuple(config["camera_names"]), config["state_dim"], config["action_dim"]) == (("front",), 6, 6)
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())["dataset"]["features"]
    assert recorded["cameras"]["front"] == {"key": "observation.images.front", "dtype": "video", "height": 480, "width": 640}
    # the deployed policy takes the arm's raw 480x640 frames
    _policy_acts(tmp_path / "run", {"front": np.zeros((480, 640, 3), dtype=np.uint8)}, 6, 6, "pick up the red cube")


def test_vla_train_reads_the_openpi_libero_layout_with_renames(libero_openpi, tmp_path, capsys):
    assert _train(libero_openpi, tmp_path / "refused") == 2
    assert "--rename image=observation.images.image" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    args = [item for pair in LIBERO_RENAMES for item in ("--rename", pair)]
    assert _train(libero_openpi, tmp_path / "run", *args) == 0
    config = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert (tuple(config["camera_names"]), config["state_dim"], config["action_dim"]) == (("image", "wrist_image"), 8, 7)
    train_config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert [list(p) for p in train_config["train"]["feature_renames"]] == [p.split("=") for p in LIBERO_RENAMES]
    frame = np.zeros((256, 256, 3), dtype=np.uint8)
    _policy_acts(tmp_path / "run", {"image": frame, "wrist_image": frame}, 8, 7, "put the bowl on the plate")


# ------------------------------------------------------- a hub repo id with --root (its local copy)


def test_vla_train_takes_a_repo_id_with_root_as_its_local_copy(six_dof, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _train("community/so_arm_pick", tmp_path / "run", "--root", str(six_dof)) == 0
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())["dataset"]
    assert Path(recorded["root"]) == six_dof.resolve()


def test_a_repo_id_without_root_is_read_from_lerobots_cache(six_dof, tmp_path, monkeypatch):
    import shutil

    import lerobot.utils.constants

    from training.dataset_source import resolve_dataset_root

    cache = tmp_path / "lerobot_home"
    shutil.copytree(six_dof, cache / "community" / "so_arm_pick")
    monkeypatch.setattr(lerobot.utils.constants, "HF_LEROBOT_HOME", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_dataset_root("community/so_arm_pick") == cache / "community" / "so_arm_pick"


def test_a_repo_id_with_no_local_copy_offline_is_refused_naming_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "nothing_here"
    assert _train("community/so_arm_pick", tmp_path / "run", "--root", str(empty)) == 2
    error = capsys.readouterr().err
    assert "'community/so_arm_pick'" in error and str(empty) in error and "HF_HUB_OFFLINE=1" in error
    assert not (tmp_path / "run").exists()


def test_a_repo_id_is_downloaded_into_root_when_the_hub_is_on(six_dof, tmp_path, monkeypatch):
    import shutil

    from training.dataset_source import DatasetSourceError, resolve_dataset_root

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fetched = []

    def download(repo_id, root):  # stands in for the hub: no network in tests
        fetched.append(repo_id)
        shutil.copytree(six_dof, root)

    assert resolve_dataset_root("community/so_arm_pick", tmp_path / "copy", download=download) == tmp_path / "copy"
    assert fetched == ["community/so_arm_pick"]
    # Already there: not fetched again.
    resolve_dataset_root("community/so_arm_pick", tmp_path / "copy", download=download)
    assert fetched == ["community/so_arm_pick"]

    def unreachable(repo_id, root):
        raise ConnectionError("hub unreachable")

    with pytest.raises(DatasetSourceError, match=r"'community/other'.*could not download.*ConnectionError: hub unreachable"):
        resolve_dataset_root("community/other", tmp_path / "other", download=unreachable)

    def not_a_dataset(repo_id, root):
        root.mkdir(parents=True)

    with pytest.raises(DatasetSourceError, match=r"no meta/info.json: not a LeRobot v3 dataset"):
        resolve_dataset_root("community/empty", tmp_path / "empty", download=not_a_dataset)


@pytest.mark.parametrize("dataset, root, message", [
    ("no/such/folder/here", None, r"no such folder, and not a hub repo id"),
    ("LOCAL", "/tmp/x", r"--root '/tmp/x' was given with --dataset .*a local folder"),
])
def test_bad_dataset_sources_are_refused(six_dof, dataset, root, message):
    from training.dataset_source import DatasetSourceError, resolve_dataset_root

    with pytest.raises(DatasetSourceError, match=message):
        resolve_dataset_root(str(six_dof) if dataset == "LOCAL" else dataset, root)
