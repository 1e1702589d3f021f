"""The LIBERO gymnasium env: registry, spaces, input validation, fast render mode, real sim.

Default run: registry / spaces / validation / mesh decimation without a simulator, plus two
real LIBERO envs shared per module (libero_object with both cameras, fast renderer, 64 px;
libero_spatial physics only). ``-m slow``: every suite, fast-vs-standard physics, vector env.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

import envs
from envs import libero_env as le
from envs.keys import OBS_STATE, TASK, image_key
from envs.mesh_decimation import Mesh, decimate, read_mesh, weld, write_mesh
from envs.suites import SUITES, get_suite, task_info

AGENT, WRIST = image_key("agentview"), image_key("wrist")


# -- registry and spaces (no simulator) ----------------------------------------------------


def test_suites_table_matches_standard_protocol():
    assert {name: (s.num_tasks, s.max_episode_steps) for name, s in SUITES.items()} == {
        "libero_spatial": (10, 220),
        "libero_object": (10, 280),
        "libero_goal": (10, 300),
        "libero_10": (10, 520),
        "libero_90": (90, 400),
    }


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_has_instructions_and_init_states(suite):
    first, last = task_info(suite, 0), task_info(suite, SUITES[suite].num_tasks - 1)
    for info in (first, last):
        assert info.instruction and info.instruction == info.instruction.strip()
        assert os.path.isfile(info.bddl_file)
        # every instruction fits the Text space of the observation
        assert le.make_observation_space(8, ()) [TASK].contains(info.instruction)
    assert first.bddl_file != last.bddl_file


def test_observation_space_shapes_and_dtypes():
    space = le.make_observation_space(96, ("agentview", "wrist"))
    assert set(space.spaces) == {AGENT, WRIST, OBS_STATE, TASK}
    assert space[AGENT].shape == (96, 96, 3) and space[AGENT].dtype == np.uint8
    assert space[OBS_STATE].shape == (8,) and space[OBS_STATE].dtype == np.float32
    assert set(le.make_observation_space(96, ()).spaces) == {OBS_STATE, TASK}


def test_rotate_180_turns_both_axes():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rotated = le.rotate_180(image)
    assert rotated[0, 0].tolist() == image[1, 2].tolist()
    assert rotated.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(le.rotate_180(rotated), image)


def test_quat_to_axis_angle():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(le.quat_to_axis_angle(np.array([0, 0, s, s])), [0, 0, np.pi / 2], atol=1e-7)
    np.testing.assert_array_equal(le.quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))


# -- bad input, rejected before any simulator is built ----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"suite": "libero_100"}, ValueError, r"suite='libero_100'.*libero_10.*libero_90"),
        ({"task_id": 10}, ValueError, r"task_id=10 out of range.*0 <= task_id <= 9"),
        ({"task_id": -1}, ValueError, r"task_id=-1"),
        ({"task_id": "3"}, TypeError, r"task_id='3'"),
        ({"image_size": 0}, ValueError, r"image_size=0: expected a positive int"),
        ({"image_size": 64.0}, ValueError, r"image_size=64.0"),
        ({"renderer": "pretty"}, ValueError, r"renderer='pretty'.*fast.*standard"),
        ({"cameras": ("agentview", "side")}, ValueError, r"unknown camera 'side'.*agentview.*wrist"),
        ({"cameras": "agentview"}, TypeError, r"cameras='agentview'"),
        ({"max_episode_steps": 0}, ValueError, r"max_episode_steps=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, pattern):
    args = {"suite": "libero_object", "task_id": 0, **kwargs}
    with pytest.raises(error, match=pattern):
        envs.make_libero_env(args.pop("suite"), args.pop("task_id"), **args)


def test_unknown_suite_via_get_suite():
    with pytest.raises(ValueError, match="expected one of"):
        get_suite("LIBERO_OBJECT")


def test_vector_env_rejects_worker_mismatch():
    with pytest.raises(ValueError, match="num_workers=1 but 2 task_ids"):
        envs.make_vector_env("libero_object", [0, 1], num_workers=1)
    with pytest.raises(ValueError, match="task_id=12"):
        envs.make_vector_env("libero_goal", [12], num_workers=1)


# -- mesh decimation and the fast XML (no simulator) ----------------------------------------


def _sphere(n: int = 40) -> Mesh:
    """A UV sphere with (2 n (n - 1)) faces and per-vertex texcoords."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, n), indexing="ij")
    vertices = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    uv = np.stack([phi / (2 * np.pi), theta / np.pi], -1).reshape(-1, 2)
    mesh = weld(Mesh(vertices.reshape(-1, 3), faces.astype(np.int64), uv))
    return mesh


def _area(mesh: Mesh) -> float:
    tri = mesh.vertices[mesh.faces]
    return float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum() / 2)


@pytest.mark.parametrize("suffix", [".obj", ".stl", ".msh"])
def test_mesh_files_round_trip(tmp_path, suffix):
    mesh = _sphere(12)
    path = tmp_path / f"m{suffix}"
    write_mesh(mesh, path)
    back = read_mesh(path)
    assert _area(back) == pytest.approx(_area(mesh), rel=1e-5)
    if suffix == ".stl":
        # no texture coordinates: welding by position also drops the zero-area pole triangles
        assert back.texcoords is None and len(back.faces) < len(mesh.faces)
    else:
        assert len(back.faces) == len(mesh.faces) and back.texcoords is not None


def test_triangle_soup_is_welded_before_decimation(tmp_path):
    mesh = _sphere(40)
    soup = Mesh(mesh.vertices[mesh.faces].reshape(-1, 3), np.arange(3 * len(mesh.faces)).reshape(-1, 3), mesh.texcoords[mesh.faces].reshape(-1, 2))
    write_mesh(soup, tmp_path / "soup.msh")
    welded = read_mesh(tmp_path / "soup.msh")
    assert len(welded.vertices) == len(mesh.vertices)
    small = decimate(welded, 0.1)
    assert len(small.faces) <= 0.12 * len(mesh.faces)
    # a welded surface keeps its shape (a triangle soup would just lose 90% of its area)
    assert _area(small) == pytest.approx(_area(mesh), rel=0.1)
    assert small.texcoords is not None and small.texcoords.shape == (len(small.vertices), 2)


def _write_binary_stl(mesh: Mesh, path) -> None:
    write_mesh(mesh, path)
    assert struct.unpack_from("<I", path.read_bytes(), 80)[0] == len(mesh.faces)


def test_fast_xml_swaps_only_visual_only_meshes(tmp_path, monkeypatch):
    from envs import mesh_decimation, render_modes

    monkeypatch.setattr(mesh_decimation, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(mesh_decimation, "_memo", {})
    big, tiny = tmp_path / "big.stl", tmp_path / "tiny.stl"
    _write_binary_stl(_sphere(40), big)  # 3042 faces: decimated
    _write_binary_stl(_sphere(6), tiny)  # too small: kept
    xml = f"""<mujoco><asset>
      <mesh name="vis" file="{big}"/><mesh name="shared" file="{big}"/><mesh name="small" file="{tiny}"/>
    </asset><worldbody><body>
      <geom type="mesh" mesh="vis" group="1" contype="0" conaffinity="0"/>
      <geom type="mesh" mesh="shared" group="1"/><geom type="mesh" mesh="shared"/>
      <geom type="mesh" mesh="small" group="1"/>
    </body></worldbody></mujoco>"""
    out = render_modes.fast_xml_processor(xml)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(out)
    files = {m.get("name"): m.get("file") for m in root.iter("mesh")}
    assert root.find("visual/quality").get("offsamples") == "0"
    assert files["shared"] == str(big)  # a collision geom uses it: physics must not change
    assert files["small"] == str(tiny)
    assert files["vis"].startswith(str(tmp_path / "cache"))
    assert len(read_mesh(files["vis"]).faces) < 0.15 * len(read_mesh(big).faces)
    # second call: served from the cache, same file, nothing rewritten
    mtime = os.stat(files["vis"]).st_mtime_ns
    monkeypatch.setattr(mesh_decimation, "_memo", {})
    again = ET.fromstring(render_modes.fast_xml_processor(xml))
    assert {m.get("name"): m.get("file") for m in again.iter("mesh")} == files
    assert os.stat(files["vis"]).st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


# -- real simulator ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def object_env():
    env = envs.make_libero_env("libero_object", 0, image_size=64, renderer="fast")
    yield env
    env.close()


@pytest.fixture(scope="module")
def physics_env():
    env = envs.make_libero_env("libero_spatial", 1, cameras=(), max_episode_steps=3)
    yield env
    env.close()


@pytest.mark.sim
def test_env_attributes(object_env):
    assert object_env.suite == "libero_object" and object_env.task_id == 0
    assert object_env.renderer == "fast"
    assert object_env.instruction == task_info("libero_object", 0).instruction
    assert object_env.num_init_states == 50
    assert object_env.max_episode_steps == 280
    assert object_env.action_space.shape == (7,) and object_env.action_space.dtype == np.float32
    assert object_env.libero_env.sim is not None  # privileged state for scripted experts


@pytest.mark.sim
def test_reset_obs_and_step_info(object_env):
    obs, info = object_env.reset(options={"init_state": 2})
    assert set(obs) == {AGENT, WRIST, OBS_STATE, TASK}
    assert obs[AGENT].shape == (64, 64, 3) and obs[AGENT].dtype == np.uint8
    assert obs[OBS_STATE].shape == (8,) and obs[OBS_STATE].dtype == np.float32
    assert obs[TASK] == object_env.instruction
    assert object_env.observation_space.contains(obs)
    assert info["is_success"] is False and info["init_state"] == 2
    assert obs[AGENT].std() > 5  # a real picture, not a blank frame
    obs2, reward, terminated, truncated, info = object_env.step(np.array([0, 0, 1, 0, 0, 0, -1], np.float32))
    assert info["is_success"] is False and (terminated, truncated) == (False, False)
    assert reward == 0.0
    assert obs2[OBS_STATE][2] > obs[OBS_STATE][2]  # moved up (+z) as commanded


@pytest.mark.sim
def test_reset_is_deterministic_and_init_states_differ(object_env):
    first, _ = object_env.reset(options={"init_state": 5})
    sim_state = object_env.libero_env.get_sim_state().copy()
    object_env.step(np.full(7, 0.5))
    again, _ = object_env.reset(options={"init_state": 5})
    np.testing.assert_array_equal(object_env.libero_env.get_sim_state(), sim_state)
    for key in (AGENT, WRIST, OBS_STATE):
        np.testing.assert_array_equal(again[key], first[key])
    other, _ = object_env.reset(options={"init_state": 6})
    assert not np.array_equal(other[AGENT], first[AGENT])


@pytest.mark.sim
def test_sampled_layouts_follow_the_seed_and_leave_global_numpy_alone(physics_env):
    def layout(seed):
        _, info = physics_env.reset(seed=seed, options={"init_state": "sampled"})
        assert info["init_state"] == "sampled" and physics_env.init_state == "sampled"
        return physics_env.libero_env.get_sim_state().copy()

    np.random.seed(123)
    expected_global = np.random.random()
    np.random.seed(123)
    first = layout(7)
    assert np.random.random() == expected_global  # LIBERO's sampler used its own seeding
    np.testing.assert_array_equal(layout(7), first)
    assert not np.array_equal(layout(8), first)
    physics_env.reset(options={"init_state": 0})
    assert not np.array_equal(physics_env.libero_env.get_sim_state(), first)
    with pytest.raises(ValueError, match="or 'sampled'"):
        physics_env.reset(options={"init_state": "random"})


@pytest.mark.sim
def test_images_are_raw_libero_frames_rotated(object_env):
    obs, _ = object_env.reset(options={"init_state": 0})
    raw = object_env.libero_env.env._get_observations(force_update=True)
    for key, camera in ((AGENT, "agentview"), (WRIST, "robot0_eye_in_hand")):
        frame = raw[f"{camera}_image"]
        np.testing.assert_array_equal(obs[key], frame[::-1, ::-1])
        assert not np.array_equal(obs[key], frame)  # the rotation did something
    # state = eef pos + axis-angle(eef quat) + gripper qpos, from the same raw observation
    expected = np.concatenate([raw["robot0_eef_pos"], le.quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]])
    np.testing.assert_allclose(obs[OBS_STATE], expected, rtol=1e-6)


@pytest.mark.sim
@pytest.mark.parametrize(
    ("action", "pattern"),
    [
        (np.zeros(6), r"shape \(6,\): expected \(7,\)"),
        (np.zeros((1, 7)), r"shape \(1, 7\)"),
        (np.array([0, 0, np.nan, 0, 0, 0, 0]), "NaN or inf"),
        (np.array([0, 0, 0, np.inf, 0, 0, 0]), "NaN or inf"),
    ],
)
def test_bad_actions_are_rejected(object_env, action, pattern):
    if object_env.init_state is None:
        object_env.reset(options={"init_state": 0, "settle_steps": 0})
    with pytest.raises(ValueError, match=pattern):
        object_env.step(action)


@pytest.mark.sim
@pytest.mark.parametrize(("options", "pattern"), [({"init_state": 50}, r"init_state'\]=50: expected an int in \[0, 49\]"), ({"init_state": -1}, "init_state"), ({"seed_state": 1}, "unknown")])
def test_bad_reset_options(object_env, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        object_env.reset(options=options)


@pytest.mark.sim
def test_physics_only_env(physics_env):
    # built without any renderer, for fast expert evaluation
    assert physics_env.libero_env.env.has_offscreen_renderer is False
    with pytest.raises(RuntimeError, match="before reset"):
        type(physics_env).step(_unreset_copy(physics_env), np.zeros(7))
    obs, info = physics_env.reset(seed=0)  # no init state named: drawn from the seed
    assert set(obs) == {OBS_STATE, TASK}
    assert 0 <= info["init_state"] < physics_env.num_init_states
    _, info_again = physics_env.reset(seed=0, options={"settle_steps": 0})
    assert info_again["init_state"] == info["init_state"]
    flags = [physics_env.step(np.zeros(7))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]  # truncated at max_episode_steps=3


def _unreset_copy(env):
    """A shallow copy of ``env`` in the state of a never-reset env (no new simulator)."""
    import copy

    clone = copy.copy(env)
    clone._steps = None
    return clone


# -- slow: every suite, fast vs standard, vector env ------------------------------------------


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_resets_and_steps(suite):
    last = SUITES[suite].num_tasks - 1
    env = envs.make_libero_env(suite, last, image_size=32)
    try:
        obs, info = env.reset(options={"init_state": env.num_init_states - 1})
        assert env.observation_space.contains(obs)
        _, _, _, _, info = env.step(np.zeros(7))
        assert "is_success" in info
    finally:
        env.close()


@pytest.mark.sim
@pytest.mark.slow
def test_fast_and_standard_have_identical_physics_different_pixels():
    action = np.array([0.3, -0.2, 0.4, 0.0, 0.1, 0.0, 1.0])
    results = {}
    for renderer in ("standard", "fast"):
        env = envs.make_libero_env("libero_object", 3, image_size=64, renderer=renderer)
        try:
            obs, _ = env.reset(options={"init_state": 7})
            model = env.libero_env.sim.model._model  # after reset: LIBERO recompiles there
            for _ in range(5):
                obs, *_ = env.step(action)
            results[renderer] = (
                model.body_mass.copy(), model.body_inertia.copy(), model.vis.quality.offsamples,
                env.libero_env.get_sim_state().copy(), obs[AGENT],
                int(sum(model.mesh_facenum[model.geom_dataid[g]] for g in range(model.ngeom) if model.geom_group[g] == 1 and model.geom_dataid[g] >= 0)),
            )
        finally:
            env.close()
    (mass_s, inertia_s, msaa_s, state_s, img_s, faces_s), (mass_f, inertia_f, msaa_f, state_f, img_f, faces_f) = results["standard"], results["fast"]
    np.testing.assert_array_equal(mass_f, mass_s)
    np.testing.assert_array_equal(inertia_f, inertia_s)
    np.testing.assert_array_equal(state_f, state_s)
    assert (msaa_s, msaa_f) == (4, 0)
    assert faces_f < 0.2 * faces_s
    assert not np.array_equal(img_f, img_s)
    # same scene: the pictures agree broadly (mean absolute difference of a few grey levels)
    assert np.abs(img_f.astype(int) - img_s.astype(int)).mean() < 20


@pytest.mark.sim
@pytest.mark.slow
def test_vector_env_batches_images_state_and_task_text():
    venv = envs.make_vector_env("libero_object", [0, 1], num_workers=2, image_size=32)
    try:
        obs, info = venv.reset(options={"init_state": 0})
        assert obs[AGENT].shape == (2, 32, 32, 3) and obs[OBS_STATE].shape == (2, 8)
        assert obs[TASK] == (task_info("libero_object", 0).instruction, task_info("libero_object", 1).instruction)
        obs, _, _, _, info = venv.step(np.zeros((2, 7), np.float32))
        assert info["is_success"].shape == (2,)
    finally:
        venv.close()
