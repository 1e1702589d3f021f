"""Demonstration collection: staging, LeRobot dataset round trip, resume, bad input, one real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from envs import collect as collect_mod
from envs.collect import (
    CollectConfig,
    CollectError,
    Failure,
    RolloutJob,
    collect,
    parse_task_ids,
)
from envs.lerobot_writer import (
    DEFAULT_VIDEO_FILE_MB,
    DatasetSpec,
    EpisodeStaging,
    RecordedEpisode,
    build_lerobot_dataset,
)

os.environ.setdefault("SVT_LOG", "1")
SIZE = 32  # small frames keep encoding and decoding fast
CAMERAS = ("agentview", "wrist")


def smooth_frames(length: int, seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 (T, S, S, 3) moving gradients: natural enough for a video codec to keep them close."""
    yy, xx = np.mgrid[0:size, 0:size]
    t = np.arange(length)[:, None, None]
    frames = np.empty((length, size, size, 3), dtype=np.uint8)
    frames[..., 0] = (xx * 4 + t * 3 + seed * 37) % 256
    frames[..., 1] = (yy * 4 + t * 2 + seed * 11) % 256
    frames[..., 2] = (96 + 64 * np.sin((xx + yy) / 6.0 + seed + t / 10.0)).astype(np.uint8)
    return frames


def synthetic_episode(task_id: int, init_state: int, length: int | None = None) -> RecordedEpisode:
    rng = np.random.default_rng(1000 * task_id + init_state)
    length = length or int(rng.integers(12, 30))
    return RecordedEpisode(
        task_id=task_id,
        init_state=init_state,
        instruction=f"pick up object {task_id} and place it in the basket",
        images={cam: smooth_frames(length, seed=3 * init_state + i + task_id) for i, cam in enumerate(CAMERAS)},
        state=rng.standard_normal((length, 8)).astype(np.float32),
        action=rng.uniform(-1, 1, (length, 7)).astype(np.float32),
    )


class SyntheticRollout:
    """Stands in for the LIBERO expert: deterministic episodes, fails on chosen init states."""

    name = "tests.SyntheticRollout"

    def __init__(self, failing: set[tuple[int, int]] = frozenset()):
        self.failing = set(failing)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, job: RolloutJob) -> RecordedEpisode:
        self.calls.append((job.task_id, job.init_state))
        self.placements = job.placements
        if (job.task_id, job.init_state) in self.failing:
            raise Failure("no success within 5 steps", 5)
        return synthetic_episode(job.task_id, job.init_state)


def fake_task_meta(num_init_states: int = 6):
    def task_meta(suite, task_ids):
        return {t: (num_init_states, f"pick up object {t} and place it in the basket") for t in task_ids}

    return task_meta


def make_config(out: Path, **overrides) -> CollectConfig:
    fields = dict(suite="libero_object", task_ids=(0, 3), episodes_per_task=2, out=out,
                  image_size=SIZE, workers=0)
    fields.update(overrides)
    return CollectConfig(**fields)


def run_synthetic(config: CollectConfig, rollout: SyntheticRollout, **kwargs):
    return collect(config, rollout=rollout, task_meta=fake_task_meta(kwargs.pop("num_init_states", 6)),
                   progress=False, **kwargs)


def load(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/test", root=root)


def dataset_columns(dataset) -> dict[str, np.ndarray]:
    hf = dataset.hf_dataset.with_format(None)
    return {
        "state": np.asarray(hf["observation.state"], dtype=np.float32),
        "action": np.asarray(hf["action"], dtype=np.float32),
        "episode_index": np.asarray(hf["episode_index"]),
        "frame_index": np.asarray(hf["frame_index"]),
        "task_index": np.asarray(hf["task_index"]),
    }


# ----------------------------------------------------------------------------- writer


def test_dataset_round_trip_states_actions_images_stats(tmp_path):
    staging = EpisodeStaging(tmp_path / "staging")
    staging.create_dirs()
    episodes = [synthetic_episode(0, 0, 20), synthetic_episode(0, 1, 17), synthetic_episode(5, 0, 25)]
    for episode in episodes:
        staging.stage_episode(episode, fps=20)
    staged = [staging.load(e.task_id, e.init_state) for e in episodes]
    root = build_lerobot_dataset(staged, tmp_path / "ds", DatasetSpec(SIZE), repo_id="local/test",
                                 extra_meta={"renderer": "fast"})

    dataset = load(root)
    assert dataset.num_episodes == 3
    assert dataset.num_frames == sum(e.length for e in episodes)
    assert dataset.fps == 20
    assert set(dataset.meta.video_keys) == {"observation.images.agentview", "observation.images.wrist"}
    assert dataset.features["observation.state"]["shape"] == (8,)
    assert dataset.features["action"]["shape"] == (7,)
    assert dataset.meta.info["codebase_version"] == "v3.0"
    assert dataset.meta.info["video_files_size_in_mb"] == DEFAULT_VIDEO_FILE_MB
    assert json.loads((root / "meta" / "collection.json").read_text()) == {"renderer": "fast"}

    # States and actions come back bit-exact, in episode order.
    columns = dataset_columns(dataset)
    np.testing.assert_array_equal(columns["state"], np.concatenate([e.state for e in episodes]))
    np.testing.assert_array_equal(columns["action"], np.concatenate([e.action for e in episodes]))
    np.testing.assert_array_equal(columns["episode_index"], np.repeat([0, 1, 2], [e.length for e in episodes]))
    # Two distinct instructions -> two LeRobot tasks; every frame carries its episode's.
    assert len(dataset.meta.tasks) == 2

    # Images: close after lossy video compression, at every episode's first, middle and last frame.
    offsets = np.cumsum([0] + [e.length for e in episodes])
    for e, episode in enumerate(episodes):
        for t in (0, episode.length // 2, episode.length - 1):
            item = dataset[int(offsets[e] + t)]
            assert item["task"] == episode.instruction
            for cam in CAMERAS:
                decoded = item[f"observation.images.{cam}"]  # float (3, S, S) in [0, 1]
                assert tuple(decoded.shape) == (3, SIZE, SIZE)
                pixels = decoded.permute(1, 2, 0).numpy() * 255.0
                error = np.abs(pixels - episode.images[cam][t].astype(np.float32)).mean()
                assert error < 12.0, (e, t, cam, error)
                # ...and far from a different frame: the right frame was decoded.
                other = episodes[(e + 1) % 3].images[cam][0].astype(np.float32)
                assert np.abs(pixels - other).mean() > error

    # Stats: aggregated over all frames, per feature.
    stats = dataset.meta.stats
    all_states = np.concatenate([e.state for e in episodes])
    all_actions = np.concatenate([e.action for e in episodes])
    for key, values in (("observation.state", all_states), ("action", all_actions)):
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key]["std"], values.std(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(stats[key]["min"], values.min(0))
        np.testing.assert_array_equal(stats[key]["max"], values.max(0))
        assert int(np.asarray(stats[key]["count"]).item()) == len(values)
    for cam in CAMERAS:
        image = stats[f"observation.images.{cam}"]
        frames = np.concatenate([e.images[cam] for e in episodes]).astype(np.float64) / 255.0
        assert image["mean"].shape == (3, 1, 1)
        assert np.all((image["min"] >= 0) & (image["max"] <= 1) & (image["std"] > 0))
        np.testing.assert_allclose(image["mean"].ravel(), frames.mean((0, 1, 2)), atol=0.02)


def test_videos_past_the_file_cap_start_new_files_and_still_decode_per_episode(tmp_path):
    """With a 1 MB cap, ~0.6 MB episodes land one per video file; each frame still decodes from
    its own episode (LeRobot finds the file and offset in the episode metadata)."""
    size, length = 128, 60
    rng = np.random.default_rng(0)
    staging = EpisodeStaging(tmp_path / "staging")
    staging.create_dirs()
    episodes = []
    for init_state in range(3):  # uniform noise: about 10 kB per frame, whatever the encoder
        images = {cam: rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8) for cam in CAMERAS}
        episodes.append(RecordedEpisode(
            task_id=0, init_state=init_state, instruction="pick up object 0", images=images,
            state=rng.standard_normal((length, 8)).astype(np.float32),
            action=rng.uniform(-1, 1, (length, 7)).astype(np.float32)))
        staging.stage_episode(episodes[-1], fps=20)
    staged = [staging.load(0, k) for k in range(3)]
    assert all(0.5e6 < e.video_path("agentview").stat().st_size < 1e6 for e in staged)
    with pytest.raises(ValueError, match="video_file_mb=0"):
        build_lerobot_dataset(staged, tmp_path / "bad", DatasetSpec(size), repo_id="local/t",
                              video_file_mb=0)
    root = build_lerobot_dataset(staged, tmp_path / "ds", DatasetSpec(size), repo_id="local/t",
                                 video_file_mb=1)

    for cam in CAMERAS:
        files = sorted(p.name for p in (root / "videos" / f"observation.images.{cam}").rglob("*.mp4"))
        assert files == ["file-000.mp4", "file-001.mp4", "file-002.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (root / "videos").rglob("*.mp4")} == {0o666 & ~umask}
    dataset = load(root)
    assert dataset.meta.info["video_files_size_in_mb"] == 1
    for e, episode in enumerate(episodes):
        item = dataset[e * length + length // 2]
        pixels = item["observation.images.agentview"].permute(1, 2, 0).numpy() * 255.0
        errors = [np.abs(pixels - source.images["agentview"][length // 2]).mean()
                  for source in episodes]  # noise survives the codec only roughly: compare
        others = [error for k, error in enumerate(errors) if k != e]
        assert errors[e] < 0.8 * min(others), (e, errors)


@pytest.mark.parametrize("vcodec", ["libsvtav1", "h264"])
def test_encoding_a_video_leaves_the_thread_scheduling_alone(tmp_path, vcodec):
    """SVT-AV1 run as root switches its calling thread to SCHED_FIFO 99 and leaves it there;
    the writer must hand the thread back as it was (as non-root there is nothing to undo)."""
    from envs.lerobot_writer import encode_video

    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    encode_video(smooth_frames(4, seed=0), tmp_path / "clip.mp4", fps=20, vcodec=vcodec)
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


def test_staging_is_atomic_and_ignores_half_written_episodes(tmp_path):
    staging = EpisodeStaging(tmp_path)
    staging.create_dirs()
    staging.stage_episode(synthetic_episode(1, 4), fps=20)
    staging.record_failure(1, 2, {"reason": "no success within 280 steps", "steps": 280})
    # What a killed worker leaves behind: a half-written folder under tmp/.
    (staging.tmp_dir / "ep_t001_i005.abc").mkdir()
    (staging.tmp_dir / "ep_t001_i005.abc" / "agentview.mp4").write_bytes(b"\x00" * 10)
    assert staging.outcomes() == {(1, 4): True, (1, 2): False}
    staging.clean_tmp()
    assert list(staging.tmp_dir.iterdir()) == []
    # Staging the same episode again keeps the first copy (a resumed run racing an old worker).
    first = (staging.episodes_dir / "ep_t001_i004" / "episode.npz").stat().st_mtime_ns
    staging.stage_episode(synthetic_episode(1, 4), fps=20)
    assert (staging.episodes_dir / "ep_t001_i004" / "episode.npz").stat().st_mtime_ns == first
    assert staging.load(1, 4).length == synthetic_episode(1, 4).length


def test_recorded_episode_rejects_inconsistent_shapes():
    good = synthetic_episode(0, 0, 10)
    with pytest.raises(ValueError, match="state shape"):
        RecordedEpisode(0, 0, "x", good.images, good.state[:5], good.action)
    with pytest.raises(ValueError, match=r"images\['agentview'\]"):
        RecordedEpisode(0, 0, "x", {"agentview": good.images["agentview"].astype(np.float32)}, good.state, good.action)
    bad_action = good.action.copy()
    bad_action[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RecordedEpisode(0, 0, "x", good.images, good.state, bad_action)


# ----------------------------------------------------------------------------- collection


def test_collect_keeps_first_successes_and_records_metadata(tmp_path):
    out = tmp_path / "D"
    rollout = SyntheticRollout(failing={(0, 1), (3, 0), (3, 2)})
    report = run_synthetic(make_config(out), rollout)

    assert report.tasks[0].kept() == [0, 2]
    assert report.tasks[3].kept() == [1, 3]
    assert rollout.calls == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2), (3, 3)]
    assert not (out / ".staging").exists()

    dataset = load(out)
    assert dataset.num_episodes == 4
    meta = json.loads((out / "meta" / "collection.json").read_text())
    assert [(e["task_id"], e["init_state"]) for e in meta["episodes"]] == [(0, 0), (0, 2), (3, 1), (3, 3)]
    assert meta["renderer"] == "fast" and meta["image_size"] == SIZE and meta["suite"] == "libero_object"
    assert meta["task_ids"] == [0, 3] and meta["expert"] == "tests.SyntheticRollout"
    assert meta["tasks"]["3"]["failed_init_states"] == [0, 2]
    assert meta["command"].startswith("vla collect --suite libero_object --tasks 0,3 --episodes-per-task 2")
    expected = np.concatenate([synthetic_episode(t, k).action for t, k in [(0, 0), (0, 2), (3, 1), (3, 3)]])
    np.testing.assert_array_equal(dataset_columns(dataset)["action"], expected)


def test_first_init_state_keeps_earlier_init_states_out_of_the_data(tmp_path):
    out = tmp_path / "D"
    rollout = SyntheticRollout(failing={(0, 4)})
    report = run_synthetic(make_config(out, task_ids=(0,), first_init_state=3), rollout)
    assert rollout.calls == [(0, 3), (0, 4), (0, 5)]
    assert report.tasks[0].kept() == [3, 5]
    meta = json.loads((out / "meta" / "collection.json").read_text())
    assert [e["init_state"] for e in meta["episodes"]] == [3, 5]
    assert "--first-init-state 3" in meta["command"]
    with pytest.raises(CollectError, match="--first-init-state 6: task 0 .* 6 init states"):
        run_synthetic(make_config(tmp_path / "E", task_ids=(0,), first_init_state=6), SyntheticRollout())


def test_sampled_placements_use_seeds_beyond_the_benchmark_init_states(tmp_path):
    out = tmp_path / "D"
    rollout = SyntheticRollout(failing={(0, 1)})
    # 4 episodes from a task with only 3 init states: sampled layouts are not limited by them.
    report = run_synthetic(make_config(out, task_ids=(0,), episodes_per_task=4, placements="sampled"),
                           rollout, num_init_states=3)
    assert rollout.placements == "sampled"
    assert rollout.calls == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert report.tasks[0].kept() == [0, 2, 3, 4] and not report.short_tasks
    meta = json.loads((out / "meta" / "collection.json").read_text())
    assert [e["layout_seed"] for e in meta["episodes"]] == [0, 2, 3, 4]
    assert meta["placements"] == "sampled" and "--placements sampled" in meta["command"]
    with pytest.raises(CollectError, match="--first-init-state 3: only applies to --placements benchmark"):
        make_config(tmp_path / "E", placements="sampled", first_init_state=3)
    with pytest.raises(CollectError, match="--placements 'random': expected one of"):
        make_config(tmp_path / "E", placements="random")


def test_action_noise_reaches_the_rollout_and_the_recorded_plan(tmp_path):
    rollout = SyntheticRollout()
    seen = []
    rollout_call = rollout.__call__
    report = run_synthetic(make_config(tmp_path / "D", task_ids=(0,), action_noise=0.3),
                           lambda job: (seen.append(job.action_noise), rollout_call(job))[1])
    assert seen == [0.3, 0.3] and report.tasks[0].kept() == [0, 1]
    meta = json.loads((tmp_path / "D" / "meta" / "collection.json").read_text())
    assert meta["plan"]["action_noise"] == 0.3 and "--action-noise 0.3" in meta["command"]
    with pytest.raises(CollectError, match=r"--action-noise -0.1: expected a number in \[0, 1\]"):
        make_config(tmp_path / "E", action_noise=-0.1)


def test_cross_task_reaches_the_rollout_and_the_recorded_plan(tmp_path):
    rollout = SyntheticRollout()
    seen = []
    rollout_call = rollout.__call__
    run_synthetic(make_config(tmp_path / "D", task_ids=(0,), cross_task=0.5),
                  lambda job: (seen.append(job.cross_task), rollout_call(job))[1])
    assert seen == [0.5, 0.5]
    meta = json.loads((tmp_path / "D" / "meta" / "collection.json").read_text())
    assert meta["plan"]["cross_task"] == 0.5 and "--cross-task 0.5" in meta["command"]
    # a collection without it records no such key (older datasets resume unchanged)
    run_synthetic(make_config(tmp_path / "E", task_ids=(0,)), SyntheticRollout())
    assert "cross_task" not in json.loads((tmp_path / "E" / "meta" / "collection.json").read_text())["plan"]
    for bad in (1.0, -0.1, True):
        with pytest.raises(CollectError, match=rf"--cross-task {bad!r}: expected a number in \[0, 1\)"):
            make_config(tmp_path / "F", cross_task=bad)


def test_collect_reports_tasks_that_run_out_of_init_states(tmp_path):
    rollout = SyntheticRollout(failing={(0, k) for k in range(1, 4)})
    report = run_synthetic(make_config(tmp_path / "D", task_ids=(0,), episodes_per_task=3), rollout,
                           num_init_states=4)
    assert report.tasks[0].kept() == [0]
    assert report.short_tasks == [0]
    assert "1,2,3" in report.table()
    assert load(tmp_path / "D").num_episodes == 1


def test_no_success_at_all_is_a_clear_error(tmp_path):
    rollout = SyntheticRollout(failing={(0, k) for k in range(3)})
    with pytest.raises(CollectError, match="no successful episode"):
        run_synthetic(make_config(tmp_path / "D", task_ids=(0,)), rollout, num_init_states=3)


def test_resume_after_crash_mid_collection(tmp_path):
    out = tmp_path / "D"
    config = make_config(out, episodes_per_task=3)
    first = SyntheticRollout(failing={(3, 1)})
    with pytest.raises(KeyboardInterrupt):
        run_synthetic(config, first, _crash_after_attempts=4)
    assert first.calls == [(0, 0), (0, 1), (0, 2), (3, 0)]
    assert not (out / "meta").exists()  # nothing that looks like a finished dataset

    second = SyntheticRollout(failing={(3, 1)})
    report = run_synthetic(config, second)
    assert second.calls == [(3, 1), (3, 2), (3, 3)]  # only what was missing
    assert report.new_attempts == 3
    meta = json.loads((out / "meta" / "collection.json").read_text())
    pairs = [(e["task_id"], e["init_state"]) for e in meta["episodes"]]
    assert pairs == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 2), (3, 3)]
    dataset = load(out)
    assert dataset.num_episodes == 6
    columns = dataset_columns(dataset)
    expected = np.concatenate([synthetic_episode(t, k).state for t, k in pairs])
    np.testing.assert_array_equal(columns["state"], expected)  # no duplicates, no gaps
    assert len(np.unique(columns["episode_index"])) == 6

    # Running the finished command again changes nothing.
    third = SyntheticRollout()
    again = run_synthetic(config, third)
    assert again.already_complete and third.calls == []
    assert load(out).num_episodes == 6


def test_resume_after_crash_during_build_and_commit(tmp_path, monkeypatch):
    out = tmp_path / "D"
    config = make_config(out, task_ids=(2,))

    real_rename = os.rename

    def crash_on_meta(src, dst):
        if Path(dst).name == "meta":
            raise KeyboardInterrupt("killed while committing")
        return real_rename(src, dst)

    monkeypatch.setattr(collect_mod.os, "rename", crash_on_meta)
    with pytest.raises(KeyboardInterrupt):
        run_synthetic(config, SyntheticRollout())
    monkeypatch.setattr(collect_mod.os, "rename", real_rename)
    assert (out / "data").exists() and not (out / "meta").exists()

    rollout = SyntheticRollout()
    run_synthetic(config, rollout)
    assert rollout.calls == []  # the staged episodes were reused, only the build was redone
    dataset = load(out)
    assert dataset.num_episodes == 2
    expected = np.concatenate([synthetic_episode(2, k).action for k in (0, 1)])
    np.testing.assert_array_equal(dataset_columns(dataset)["action"], expected)


def test_dead_worker_costs_its_attempt_not_the_collection(tmp_path):
    """A worker that dies mid-attempt (here: SystemExit, as a segfault would) is replaced."""
    import sys

    out = tmp_path / "D"
    # sys.exit(job) kills the worker process: SystemExit is not an Exception, nothing catches it.
    with pytest.raises(CollectError, match="no successful episode"):
        collect(make_config(out, task_ids=(4,), workers=2), rollout=sys.exit,
                task_meta=fake_task_meta(3), expert_name="exit", progress=False)
    staging = EpisodeStaging(out / ".staging")
    assert staging.outcomes() == {(4, 0): False, (4, 1): False, (4, 2): False}
    assert "worker process died" in staging.failure_reason(4, 1)["reason"]

    # Crashes may be transient (the OOM killer): a re-run tries those init states again.
    rollout = SyntheticRollout()
    run_synthetic(make_config(out, task_ids=(4,), workers=0), rollout, num_init_states=3)
    assert rollout.calls == [(4, 0), (4, 1)]
    assert load(out).num_episodes == 2


# ----------------------------------------------------------------------------- bad input


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    import vla_cli

    code = vla_cli.main(["collect", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--suite", "libero_nope", "--episodes-per-task", "1"], ["--suite", "'libero_nope'", "libero_object"]),
        (["--suite", "libero_object", "--tasks", "0,12", "--episodes-per-task", "1"],
         ["--tasks", "12", "0..9"]),
        (["--suite", "libero_object", "--tasks", "zero", "--episodes-per-task", "1"],
         ["--tasks", "'zero'", "0,3,7"]),
        (["--suite", "libero_object", "--tasks", "0", "--image-size", "0", "--episodes-per-task", "1"],
         ["--image-size", "0", "expected an int >= 2"]),
        (["--suite", "libero_object", "--tasks", "0", "--episodes-per-task", "0"],
         ["--episodes-per-task", "0", "expected an int >= 1"]),
        (["--suite", "libero_object", "--tasks", "0", "--episodes-per-task", "1", "--renderer", "pretty"],
         ["--renderer", "'pretty'", "fast"]),
        (["--suite", "libero_10", "--tasks", "0", "--episodes-per-task", "1"],
         ["--suite", "'libero_10'", "no scripted expert", "libero_goal"]),
    ],
)
def test_bad_arguments_name_flag_value_and_expectation(argv, expected, tmp_path, capsys):
    code, err = run_cli([*argv, "--out", str(tmp_path / "D")], capsys)
    assert code == 2
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "D").exists()


def test_existing_non_dataset_out_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "D"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_cli(["--suite", "libero_object", "--tasks", "0", "--episodes-per-task", "1",
                         "--out", str(out)], capsys)
    assert code == 2
    assert "--out" in err and str(out) in err and "notes.txt" in err and "expected a new or empty folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "D"
    run_synthetic(make_config(out, task_ids=(1,), episodes_per_task=1), SyntheticRollout())
    with pytest.raises(CollectError, match=r"--out .*image_size: 32 there, 64 asked"):
        run_synthetic(make_config(out, task_ids=(1,), episodes_per_task=1, image_size=64), SyntheticRollout())


def test_parse_task_ids():
    assert parse_task_ids("0,3,7", "libero_object") == (0, 3, 7)
    assert parse_task_ids("2-4", "libero_object") == (2, 3, 4)
    assert parse_task_ids("all", "libero_spatial") == tuple(range(10))
    assert parse_task_ids(None, "libero_object") == tuple(range(10))
    with pytest.raises(ValueError, match="--tasks"):
        parse_task_ids("1,,2", "libero_object")
    with pytest.raises(ValueError, match=r"--tasks '3,12'.*0\.\.9.*\[12\]"):
        parse_task_ids("3,12", "libero_object")
    with pytest.raises(CollectError, match="repeated"):
        CollectConfig("libero_object", (1, 1), 1, Path("x"))
    with pytest.raises(CollectError, match="even"):
        CollectConfig("libero_object", (1,), 1, Path("x"), image_size=63)


# ----------------------------------------------------------------------------- real simulator


@pytest.mark.sim
def test_real_collection_one_episode(tmp_path):
    """libero_object task 0, one episode at 64 px, through a worker process."""
    out = tmp_path / "D"
    start = time.perf_counter()
    config = CollectConfig("libero_object", (0,), 1, out, image_size=64, workers=1)
    report = collect(config, progress=False)
    seconds = time.perf_counter() - start
    assert report.tasks[0].kept() == [0], report.table()
    dataset = load(out)
    assert dataset.num_episodes == 1
    item = dataset[0]
    assert tuple(item["observation.images.agentview"].shape) == (3, 64, 64)
    assert tuple(item["observation.images.wrist"].shape) == (3, 64, 64)
    assert item["task"] == "pick up the alphabet soup and place it in the basket"
    meta = json.loads((out / "meta" / "collection.json").read_text())
    assert meta["renderer"] == "fast" and meta["episodes"][0]["init_state"] == 0
    actions = dataset_columns(dataset)["action"]
    assert np.all(np.abs(actions) <= 1.0)
    print(f"real collection: {meta['episodes'][0]['length']} steps in {seconds:.1f} s")


@pytest.mark.sim
def test_real_cross_task_episode_follows_another_tasks_goal_and_words(tmp_path):
    """`--cross-task`: in task 0's scene the expert does another task's goal (judged by LIBERO's
    own predicates on that goal) and the episode is recorded with that task's instruction."""
    from envs.suites import task_info

    out = tmp_path / "D"
    # init state 0 of task 0 draws a cross-task episode at 0.99 (the draw is 0.82)
    config = CollectConfig("libero_object", (0,), 1, out, image_size=32, workers=1, cross_task=0.99)
    report = collect(config, progress=False)
    assert report.tasks[0].kept() == [0], report.table()
    episode = json.loads((out / "meta" / "collection.json").read_text())["episodes"][0]
    goal_task = episode["goal_task"]
    assert goal_task != 0
    instruction = task_info("libero_object", goal_task).instruction
    assert episode["instruction"] == instruction
    assert load(out)[0]["task"] == instruction != task_info("libero_object", 0).instruction


@pytest.mark.sim
def test_in_process_collection_writes_its_dataset(tmp_path):
    """`--workers 0` renders in the CLI's own process, which then imports lerobot to write the
    dataset; importing triton after an EGL context exists used to segfault there, silently, with
    no dataset written. A fresh interpreter, so no earlier import in this test session hides it."""
    import subprocess
    import sys

    out = tmp_path / "D"
    completed = subprocess.run(
        [sys.executable, "-m", "vla_cli", "collect", "--suite", "libero_object", "--tasks", "0",
         "--episodes-per-task", "1", "--image-size", "32", "--workers", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert load(out).num_episodes == 1
