"""Episode staging and LeRobot v3 dataset writing, for demonstration collection.

Two steps, so that a collection can be interrupted at any moment without corrupting anything:

1. **Stage** (in the worker that recorded the episode): each successful episode becomes one folder
   ``<staging>/episodes/ep_t<task>_i<init>/`` holding ``episode.npz`` (state, action, instruction,
   per-camera image stats) and one MP4 per camera. The folder is written under a temporary name
   and renamed into place, so it either exists complete or not at all. Videos are encoded here,
   in the parallel workers, with the codec settings LeRobot's own recorder uses; the build step
   never re-encodes.
2. **Build** (in the main process, once every episode is staged): the staged episodes go into a
   fresh LeRobot dataset through LeRobot's own writer (``LeRobotDataset.create`` / ``add_frame`` /
   ``save_episode`` / ``finalize``), so the parquet, video and meta layout are exactly what
   ``LeRobotDataset`` reads. The pre-encoded MP4s are handed to LeRobot through its streaming
   encoder hook (``_PreEncodedVideos``), which LeRobot then concatenates by stream copy.

On-disk layout of one staged episode (T frames, S = image size)::

    episode.npz   state (T, 8) float32, action (T, 7) float32, instruction str,
                  task_id, init_state, goal_task (-1: its own), stats.<camera>.<stat> (C,)
                  in uint8 units
    <camera>.mp4  T frames, S x S, yuv420p, one per camera

Pinned to lerobot 0.4.4 (the newest for Python 3.11): ``_PreEncodedVideos`` implements the
interface of its ``StreamingVideoEncoder``; tests/envs/test_envs_collect.py round-trips a dataset
through ``LeRobotDataset`` to catch a change there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from envs.keys import ACTION, OBS_STATE, TASK, image_key

STATE_DIM = 8  # eef pos (3) + axis-angle (3) + gripper qpos (2)
ACTION_DIM = 7  # delta eef (6) + gripper
DEFAULT_FPS = 20  # LIBERO's control rate
DEFAULT_CAMERAS = ("agentview", "wrist")
# Same settings as LeRobot's recorder (lerobot/datasets/video_utils.py, 0.4.4): AV1 via SVT-AV1,
# CRF 30, a keyframe every 2 frames (cheap random access when training samples single frames),
# preset 12 (its fastest). Decoded here by torchcodec through the system FFmpeg's dav1d.
DEFAULT_VCODEC = "libsvtav1"
# LeRobot appends each episode's video to its camera's current file by remuxing the whole file,
# so adding an episode costs time in proportion to that file's size, and a dataset written into
# LeRobot's default 200 MB files takes quadratic time (`vla bench dataset-write` measures it).
# Smaller files bound the cost per episode; the format and readers are unchanged.
DEFAULT_VIDEO_FILE_MB = 20
_VCODECS = ("libsvtav1", "h264")
COLLECTION_META_FILE = "collection.json"  # our extra file in <dataset>/meta/
_STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")


@dataclass(frozen=True)
class DatasetSpec:
    """The fixed shape of a collected dataset."""

    image_size: int
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    fps: int = DEFAULT_FPS
    vcodec: str = DEFAULT_VCODEC
    state_dim: int = STATE_DIM
    action_dim: int = ACTION_DIM

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(
                f"DatasetSpec.image_size={self.image_size!r}: expected a positive int (square side, pixels)"
            )
        if self.image_size % 2:
            # yuv420p subsamples chroma 2x2: odd sizes cannot be encoded.
            raise ValueError(
                f"DatasetSpec.image_size={self.image_size!r}: expected an even number of pixels "
                "(yuv420p video needs even sides)"
            )
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"DatasetSpec.cameras={self.cameras!r}: expected distinct camera names")
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise ValueError(f"DatasetSpec.fps={self.fps!r}: expected a positive int")
        if self.vcodec not in _VCODECS:
            raise ValueError(f"DatasetSpec.vcodec={self.vcodec!r}: expected one of {_VCODECS}")
        for name in ("state_dim", "action_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DatasetSpec.{name}={value!r}: expected a positive int")

    def lerobot_features(self) -> dict[str, dict[str, Any]]:
        """LeRobot's ``features`` dict (its default index/timestamp features are added by LeRobot)."""
        features: dict[str, dict[str, Any]] = {}
        for camera in self.cameras:
            features[image_key(camera)] = {
                "dtype": "video",
                "shape": (self.image_size, self.image_size, 3),
                "names": ["height", "width", "channels"],
            }
        features[OBS_STATE] = {
            "dtype": "float32",
            "shape": (self.state_dim,),
            "names": ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_l", "gripper_r"]
            if self.state_dim == STATE_DIM
            else None,
        }
        features[ACTION] = {
            "dtype": "float32",
            "shape": (self.action_dim,),
            "names": ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
            if self.action_dim == ACTION_DIM
            else None,
        }
        return features


@dataclass(frozen=True)
class RecordedEpisode:
    """One demonstration in memory: frame t pairs the observation with the action taken from it.

    images: camera -> uint8 (T, S, S, 3); state: float32 (T, state_dim); action: float32 (T, A).
    """

    task_id: int
    init_state: int
    instruction: str
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    # The task whose goal (and instruction) the episode followed in task_id's scene; None: its
    # own (`vla collect --cross-task`).
    goal_task: int | None = None

    def __post_init__(self) -> None:
        length = len(self.action)
        if length == 0:
            raise ValueError("RecordedEpisode.action: expected at least one frame, got 0")
        if not isinstance(self.instruction, str) or not self.instruction:
            raise ValueError(f"RecordedEpisode.instruction={self.instruction!r}: expected a non-empty str")
        if self.state.ndim != 2 or len(self.state) != length:
            raise ValueError(
                f"RecordedEpisode.state shape {self.state.shape}: expected (T={length}, state_dim)"
            )
        if self.action.ndim != 2:
            raise ValueError(f"RecordedEpisode.action shape {self.action.shape}: expected (T, A)")
        for camera, frames in self.images.items():
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != length or frames.shape[3] != 3:
                raise ValueError(
                    f"RecordedEpisode.images[{camera!r}] {frames.dtype} {frames.shape}: expected "
                    f"uint8 (T={length}, S, S, 3)"
                )
        if not (np.isfinite(self.state).all() and np.isfinite(self.action).all()):
            raise ValueError("RecordedEpisode: state or action holds NaN/inf")

    @property
    def length(self) -> int:
        return len(self.action)


@dataclass(frozen=True)
class StagedEpisode:
    """A staged episode on disk (see the module docstring for the layout)."""

    path: Path
    task_id: int
    init_state: int
    instruction: str
    state: np.ndarray  # (T, state_dim) float32
    action: np.ndarray  # (T, A) float32
    video_stats: dict[str, dict[str, np.ndarray]] = field(repr=False)  # camera -> stat -> (C,)
    goal_task: int | None = None  # see RecordedEpisode.goal_task

    @property
    def length(self) -> int:
        return len(self.action)

    def video_path(self, camera: str) -> Path:
        return self.path / f"{camera}.mp4"


def episode_name(task_id: int, init_state: int) -> str:
    return f"ep_t{task_id:03d}_i{init_state:03d}"


# ----------------------------------------------------------------------------- video


def encode_video(frames: np.ndarray, path: Path, *, fps: int, vcodec: str = DEFAULT_VCODEC) -> None:
    """Encodes uint8 (T, H, W, 3) frames to an MP4 the way LeRobot's recorder does.

    Timestamps are frame_index / fps (pts in a 1/fps time base), which is what LeRobot's reader
    assumes when it maps a frame's timestamp to a video position.
    """
    import av  # lazy: only the recording workers and the tests encode

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.dtype} {frames.shape}: expected uint8 (T, H, W, 3)")
    os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 prints a banner per video otherwise
    options = {"g": "2", "crf": "30"}
    if vcodec == "libsvtav1":
        # One encoder thread: the collection already runs one worker per core.
        options.update(preset="12", **{"svtav1-params": "lp=1"})
    else:
        options.update(preset="veryfast", threads="1")
    with _scheduling_kept(), av.open(str(path), "w") as container:
        stream = container.add_stream(vcodec, fps, options=options)
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames.shape[1:3]
        stream.time_base = Fraction(1, fps)
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = index
            video_frame.time_base = Fraction(1, fps)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)


@contextmanager
def _scheduling_kept():
    """Gives the calling thread its scheduling policy back after a video encoder ran.

    SVT-AV1, run as root, switches the thread that starts an encoder to SCHED_FIFO at priority
    99 (its "real-time" mode) and leaves it there. A collection worker would then simulate, and
    a process that collects and trains would train, at real-time priority, starving everything
    else on the machine (the test session's ROS and export tests stalled behind it).
    """
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)  # lowering needs no privilege


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 (T, H, W, 3) frames over all pixels, in uint8 units.

    Returns min, max, mean, std, q01, q10, q50, q90, q99, each float64 (3,), and count (1,) = T
    frames: the stat names and shapes LeRobot 0.4.4 produces for an image feature, so its
    ``aggregate_stats`` combines them with its own (weighting episodes by ``count``). Quantiles
    are exact: uint8 pixels have 256 possible values, so a per-channel histogram holds them all.

    Deliberately numpy only: importing lerobot (torch, triton) in a process that has already
    created a LIBERO env with EGL rendering segfaults (triton's import), and the workers that
    record episodes are such processes.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.dtype} {frames.shape}: expected uint8 (T, H, W, 3)")
    pixels = frames.reshape(-1, 3)  # (T*H*W, 3)
    hist = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)])  # (3, 256)
    total = hist.sum(axis=1, keepdims=True)  # (3, 1)
    values = np.arange(256, dtype=np.float64)
    mean = (hist * values).sum(axis=1) / total[:, 0]
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total[:, 0]
    cdf = np.cumsum(hist, axis=1) / total  # (3, 256)
    stats = {
        "min": np.argmax(hist > 0, axis=1).astype(np.float64),
        "max": (255 - np.argmax(hist[:, ::-1] > 0, axis=1)).astype(np.float64),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([len(frames)], dtype=np.int64),
    }
    for q in (0.01, 0.10, 0.50, 0.90, 0.99):
        # The smallest value whose cumulative share reaches q (inverted CDF).
        stats[f"q{round(q * 100):02d}"] = np.array(
            [float(np.searchsorted(cdf[c], q - 1e-12)) for c in range(3)]
        )
    return stats


# ----------------------------------------------------------------------------- staging


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename."""
    _write_json_atomic(Path(path), payload)


class EpisodeStaging:
    """Successful episodes and failed attempts of one collection, each recorded atomically.

    ``<root>/episodes/ep_t<task>_i<init>/``  one successful episode (complete or absent)
    ``<root>/failures/t<task>_i<init>.json`` one failed attempt (why it failed)
    ``<root>/tmp/``                          half-written episodes; removed by ``clean_tmp``
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.episodes_dir = self.root / "episodes"
        self.failures_dir = self.root / "failures"
        self.tmp_dir = self.root / "tmp"

    def create_dirs(self) -> None:
        for folder in (self.episodes_dir, self.failures_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def clean_tmp(self) -> None:
        """Drops what an interrupted run left half-written (call with the collection lock held)."""
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    # -- writing (in the workers) --

    def stage_episode(self, episode: RecordedEpisode, *, fps: int, vcodec: str = DEFAULT_VCODEC) -> Path:
        """Encodes and stores one episode; returns its folder. Idempotent per (task, init state)."""
        final = self.episodes_dir / episode_name(episode.task_id, episode.init_state)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.episodes_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=self.tmp_dir))
        try:
            arrays: dict[str, Any] = {
                "state": np.asarray(episode.state, dtype=np.float32),
                "action": np.asarray(episode.action, dtype=np.float32),
                "instruction": np.array(episode.instruction),
                "task_id": np.array(episode.task_id, dtype=np.int64),
                "init_state": np.array(episode.init_state, dtype=np.int64),
                "goal_task": np.array(-1 if episode.goal_task is None else episode.goal_task, dtype=np.int64),
                "cameras": np.array(sorted(episode.images)),
            }
            for camera, frames in episode.images.items():
                encode_video(frames, work / f"{camera}.mp4", fps=fps, vcodec=vcodec)
                for stat, value in image_stats(frames).items():
                    arrays[f"stats.{camera}.{stat}"] = np.asarray(value)
            with open(work / "episode.npz", "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(work, final)  # atomic; fails if another run staged it first
            except OSError:
                if not final.exists():
                    raise
                shutil.rmtree(work, ignore_errors=True)  # same episode, staged already: keep that one
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return final

    def record_failure(self, task_id: int, init_state: int, reason: dict[str, Any]) -> None:
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.failures_dir / f"t{task_id:03d}_i{init_state:03d}.json", reason)

    # -- reading (in the main process) --

    def outcomes(self) -> dict[tuple[int, int], bool]:
        """(task_id, init_state) -> succeeded, for every attempt already recorded."""
        result: dict[tuple[int, int], bool] = {}
        if self.failures_dir.exists():
            for path in self.failures_dir.glob("t*_i*.json"):
                task, init = path.stem[1:].split("_i")
                result[(int(task), int(init))] = False
        if self.episodes_dir.exists():
            for path in self.episodes_dir.glob("ep_t*_i*"):
                if (path / "episode.npz").is_file():
                    task, init = path.name[len("ep_t") :].split("_i")
                    result[(int(task), int(init))] = True  # a success outranks an earlier failure
        return result

    def failure_reason(self, task_id: int, init_state: int) -> dict[str, Any] | None:
        path = self.failures_dir / f"t{task_id:03d}_i{init_state:03d}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def load(self, task_id: int, init_state: int) -> StagedEpisode:
        path = self.episodes_dir / episode_name(task_id, init_state)
        with np.load(path / "episode.npz") as data:
            cameras = [str(c) for c in data["cameras"]]
            stats = {
                camera: {stat: data[f"stats.{camera}.{stat}"] for stat in _STAT_NAMES} for camera in cameras
            }
            staged = StagedEpisode(
                path=path,
                task_id=int(data["task_id"]),
                init_state=int(data["init_state"]),
                instruction=str(data["instruction"]),
                state=data["state"],
                action=data["action"],
                video_stats=stats,
                # episodes staged before --cross-task existed have no goal_task: their own
                goal_task=int(data["goal_task"]) if "goal_task" in data and int(data["goal_task"]) >= 0 else None,
            )
        for camera in cameras:
            if not staged.video_path(camera).is_file():
                raise FileNotFoundError(f"staged episode {path} lacks {camera}.mp4")
        return staged


# ----------------------------------------------------------------------------- building


class _PreEncodedVideos:
    """Stands in for LeRobot 0.4.4's ``StreamingVideoEncoder`` and hands it finished MP4s.

    LeRobot's streaming path calls ``start_episode`` on an episode's first ``add_frame``,
    ``feed_frame`` per frame and ``finish_episode`` in ``save_episode``, which must return
    ``{video_key: (mp4_path, stats)}`` with stats per channel in uint8 units; LeRobot then moves or
    stream-copies the MP4 into the dataset's video file and deletes the MP4's folder. So each
    episode's videos are copied into a fresh temporary folder inside the dataset root.
    """

    def __init__(self) -> None:
        self._episode: StagedEpisode | None = None
        self._temp_dir: Path | None = None

    def set_episode(self, episode: StagedEpisode) -> None:
        self._episode = episode

    def start_episode(self, video_keys: list[str], temp_dir: Path) -> None:
        self._temp_dir = Path(temp_dir)

    def feed_frame(self, video_key: str, image: np.ndarray) -> None:
        pass  # frames are already encoded

    def finish_episode(self) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
        if self._episode is None or self._temp_dir is None:
            raise RuntimeError("_PreEncodedVideos.finish_episode before set_episode/start_episode")
        results = {}
        for camera, stats in self._episode.video_stats.items():
            folder = Path(tempfile.mkdtemp(dir=self._temp_dir))
            target = folder / f"{camera}.mp4"
            shutil.copyfile(self._episode.video_path(camera), target)
            results[image_key(camera)] = (target, dict(stats))
        self._episode = None
        return results

    def cancel_episode(self) -> None:
        self._episode = None

    def close(self) -> None:
        self._episode = None


def build_lerobot_dataset(
    episodes: Iterable[StagedEpisode],
    root: Path | str,
    spec: DatasetSpec,
    *,
    repo_id: str,
    extra_meta: dict[str, Any] | None = None,
    robot_type: str = "panda",
    on_episode: Any = None,
    video_file_mb: int = DEFAULT_VIDEO_FILE_MB,
) -> Path:
    """Writes staged episodes, in the given order, as a new LeRobot v3 dataset at ``root``.

    ``root`` must not exist. ``extra_meta`` goes to ``<root>/meta/collection.json``.
    ``on_episode()`` is called after each episode (progress bars). A camera's video file is
    closed and the next one started once it would grow past ``video_file_mb`` (see
    DEFAULT_VIDEO_FILE_MB for why the default is below LeRobot's).
    """
    if isinstance(video_file_mb, bool) or not isinstance(video_file_mb, int) or video_file_mb <= 0:
        raise ValueError(f"video_file_mb={video_file_mb!r}: expected a positive int (megabytes)")
    with _quiet_writer_logs():
        return _build(episodes, Path(root), spec, repo_id, extra_meta, robot_type, on_episode,
                      video_file_mb)


@contextmanager
def _quiet_writer_logs():
    """Silences what LeRobot's writer prints per episode (a `datasets` progress bar, FFmpeg notes)."""
    import av
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    # LeRobot re-installs FFmpeg's own stderr logger after each video it probes, and FFmpeg then
    # prints an INFO note per concatenated episode. Keep PyAV's (silent) logger meanwhile.
    restore = av.logging.restore_default_callback
    av.logging.restore_default_callback = lambda: None
    av.logging.set_level(None)
    try:
        yield
    finally:
        av.logging.restore_default_callback = restore
        if bars_were_on:
            datasets.enable_progress_bars()


def _readable_by_umask(folder: Path) -> None:
    """Gives files the mode the umask grants new files. LeRobot's concatenated videos come from
    ``tempfile`` and keep its private 0600, so other users (a lab's training account, a
    container running as another uid) could not read a dataset's videos."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _build(episodes, root: Path, spec: DatasetSpec, repo_id: str, extra_meta, robot_type, on_episode,
           video_file_mb: int) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset.create(
        repo_id,
        fps=spec.fps,
        features=spec.lerobot_features(),
        root=root,
        robot_type=robot_type,
        use_videos=True,
        streaming_encoding=True,  # selects LeRobot's path that takes finished MP4s
        vcodec=spec.vcodec,
    )
    # LeRobotDataset.create does not take the file size (its metadata's create does); the writer
    # reads it from info on every episode and info.json is rewritten with it.
    dataset.meta.info["video_files_size_in_mb"] = video_file_mb
    videos = _PreEncodedVideos()
    dataset._streaming_encoder.close()
    dataset._streaming_encoder = videos  # the hook described in _PreEncodedVideos
    # One placeholder per camera: LeRobot validates each frame's shape but never reads the pixels.
    blank = np.zeros((spec.image_size, spec.image_size, 3), dtype=np.uint8)
    count = 0
    try:
        for episode in episodes:
            if set(episode.video_stats) != set(spec.cameras):
                raise ValueError(
                    f"staged episode {episode.path} has cameras {sorted(episode.video_stats)}, "
                    f"dataset expects {sorted(spec.cameras)}"
                )
            videos.set_episode(episode)
            for t in range(episode.length):
                frame: dict[str, Any] = {image_key(camera): blank for camera in spec.cameras}
                frame[OBS_STATE] = episode.state[t]
                frame[ACTION] = episode.action[t]
                frame[TASK] = episode.instruction
                dataset.add_frame(frame)
            dataset.save_episode()
            count += 1
            if on_episode is not None:
                on_episode()
    finally:
        dataset.finalize()
    if count == 0:
        raise ValueError("build_lerobot_dataset: no episodes to write")
    _readable_by_umask(root / "videos")
    if extra_meta is not None:
        write_json_atomic(root / "meta" / COLLECTION_META_FILE, extra_meta)
    return root
