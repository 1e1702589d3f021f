"""The safety layer: property tests (no command leaving the filter violates a limit, whatever the
policy outputs), watchdog and e-stop tests on an injectable clock, config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robots.safety import (
    Box,
    DeltaEEFSpace,
    GripperLimits,
    JointPositionSpace,
    SafetyError,
    SafetyFilter,
    SafetyLimits,
    braking_speed,
    is_valid_command,
    libero_limits,
)

HZ = 20.0
DT = 1.0 / HZ
TOL = 1e-7  # float slack on limit checks (limits are O(1) rad, m, s)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# What a policy may emit: anything, including NaN, inf, 1e30 and wild jumps.
wild_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-4.0, max_value=4.0),
    st.sampled_from([0.0, 1e30, -1e30, math.nan, math.inf, -math.inf]),
)


def wild_command(dim: int):
    vectors = st.lists(wild_float, min_size=dim, max_size=dim).map(np.array)
    misshapen = st.lists(wild_float, min_size=0, max_size=dim + 2).map(np.array)
    return st.one_of(vectors, vectors, vectors, misshapen, st.none(), st.just("not an array"))


def command_stream(dim: int):
    """Runs of repeated commands: a policy that keeps pushing one way for up to 40 steps drives
    the arm into its limits, which is where clipping one limit at a time breaks the others."""
    runs = st.lists(st.tuples(wild_command(dim), st.integers(1, 40)), min_size=1, max_size=6)
    return runs.map(lambda rs: [command for command, n in rs for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# Joint position space
# ---------------------------------------------------------------------------------------------

JOINT_SPACE = JointPositionSpace(
    lower=(-1.0, -2.0, -0.5),
    upper=(1.0, 0.5, 2.5),
    max_velocity=(1.0, 2.0, 0.5),
    max_acceleration=(4.0, 10.0, 3.0),
    max_step=(0.04, 1.0, 1.0),
    gripper=GripperLimits(lower=0.0, upper=0.08, max_step=0.01, initial=0.0),
)


def check_joint_stream(space: JointPositionSpace, outputs: list[np.ndarray], start: np.ndarray) -> None:
    lower, upper = np.array(space.lower), np.array(space.upper)
    vmax = np.minimum(np.array(space.max_velocity), np.array(space.max_step) / DT)
    amax = np.array(space.max_acceleration)
    n = space.n_joints
    prev_q, prev_v, prev_g = start, np.zeros(n), None
    for out in outputs:
        assert out.shape == (space.command_dim,)
        assert np.all(np.isfinite(out))
        q, g = out[:n], out[n]
        assert np.all(q >= lower - TOL) and np.all(q <= upper + TOL), q
        v = (q - prev_q) / DT
        assert np.all(np.abs(v) <= vmax + TOL), (v, vmax)
        assert np.all(np.abs(v - prev_v) <= amax * DT + TOL), (v - prev_v, amax * DT)
        assert space.gripper.lower - TOL <= g <= space.gripper.upper + TOL
        if prev_g is not None:
            assert abs(g - prev_g) <= space.gripper.max_step + TOL
        prev_q, prev_v, prev_g = q, v, g


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=command_stream(4),
    start=st.tuples(
        st.floats(-1.0, 1.0), st.floats(-2.0, 0.5), st.floats(-0.5, 2.5)
    ).map(np.array),
    stale=st.lists(st.booleans(), min_size=240, max_size=240),
)
def test_joint_commands_never_violate_limits(commands, start, stale) -> None:
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(JOINT_SPACE, control_hz=HZ), clock=clock)
    flt.reset(start)
    outputs = []
    for command, is_stale in zip(commands, stale):
        clock.advance(DT)
        obs_time = clock.t - (1.0 if is_stale else 0.0)
        outputs.append(flt.filter(command, observation_time=obs_time, command_time=clock.t))
    check_joint_stream(JOINT_SPACE, outputs, start)


@settings(max_examples=15, deadline=None)
@given(targets=st.lists(st.tuples(st.floats(-1, 1), st.floats(-2, 0.5), st.floats(-0.5, 2.5)), min_size=1, max_size=40))
def test_joint_filter_reaches_a_reachable_target_and_then_tracks_it_exactly(targets) -> None:
    # A valid, reachable target is followed (not just "safe"): after enough steps we are there.
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(JOINT_SPACE, control_hz=HZ), clock=clock)
    flt.reset(np.zeros(3))
    target = np.array(targets[-1] + (0.05,))
    for _ in range(150):
        clock.advance(DT)
        out = flt.filter(target, observation_time=clock.t)
    np.testing.assert_allclose(out, target, atol=1e-9)
    assert not flt.last_decision.held and not flt.last_decision.modified


def planar_fk(q: np.ndarray) -> np.ndarray:
    """Two-link planar arm (links 0.5 m and 0.4 m) in the x-y plane at z = 0.3; q (3,), q[2] unused."""
    x = 0.5 * math.cos(q[0]) + 0.4 * math.cos(q[0] + q[1])
    y = 0.5 * math.sin(q[0]) + 0.4 * math.sin(q[0] + q[1])
    return np.array([x, y, 0.3])


WORKSPACE_SPACE = JointPositionSpace(
    lower=(-3.0, -3.0, -1.0),
    upper=(3.0, 3.0, 1.0),
    max_velocity=2.0,
    max_acceleration=8.0,
    workspace=Box(lower=(-0.2, -0.9, 0.0), upper=(0.95, 0.7, 1.0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=command_stream(3))
def test_joint_commands_keep_the_end_effector_in_the_cartesian_workspace(commands) -> None:
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(WORKSPACE_SPACE, control_hz=HZ), clock=clock, forward_kinematics=planar_fk)
    start = np.array([0.3, 0.4, 0.0])
    flt.reset(start)
    prev_q, prev_v = start, np.zeros(3)
    for command in commands:
        clock.advance(DT)
        q = flt.filter(command, observation_time=clock.t)
        assert WORKSPACE_SPACE.workspace.contains(planar_fk(q), eps=TOL), planar_fk(q)
        v = (q - prev_q) / DT
        assert np.all(np.abs(v) <= 2.0 + TOL)
        assert np.all(np.abs(v - prev_v) <= 8.0 * DT + TOL)
        prev_q, prev_v = q, v


def test_workspace_needs_forward_kinematics_and_a_start_inside() -> None:
    limits = SafetyLimits(WORKSPACE_SPACE, control_hz=HZ)
    with pytest.raises(ValueError, match="forward_kinematics"):
        SafetyFilter(limits)
    flt = SafetyFilter(limits, forward_kinematics=planar_fk)
    with pytest.raises(SafetyError, match="workspace"):
        flt.reset(np.array([1.57, 0.0, 0.0]))  # end effector at y = 0.9 > 0.7
    flt.reset(np.array([0.0, 0.0, 0.0]))  # (0.9, 0, 0.3) is inside: starts


def test_reset_refuses_to_start_outside_the_joint_limits() -> None:
    flt = SafetyFilter(SafetyLimits(JOINT_SPACE, control_hz=HZ))
    with pytest.raises(SafetyError, match="outside the joint limits"):
        flt.reset(np.array([0.0, 1.0, 0.0]))  # joint 1 upper limit is 0.5
    with pytest.raises(SafetyError, match="finite"):
        flt.reset(np.array([0.0, math.nan, 0.0]))


# ---------------------------------------------------------------------------------------------
# Delta end-effector space (LIBERO style)
# ---------------------------------------------------------------------------------------------

EEF_SPACE = DeltaEEFSpace(
    max_linear_velocity=0.6,
    max_angular_velocity=6.0,
    max_linear_acceleration=12.0,
    max_angular_acceleration=150.0,
    max_step=1.5,
    workspace=Box(lower=(-0.3, -0.3, 0.8), upper=(0.3, 0.3, 1.3)),
)
SCALE = np.array([0.05] * 3 + [0.5] * 3)


def check_eef_output(out, prev, measured, *, check_accel: bool) -> None:
    assert out.shape == (7,) and np.all(np.isfinite(out))
    assert np.all(np.abs(out) <= 1.0 + TOL)
    v = out[:6] * SCALE / DT
    vmax = np.array([0.6] * 3 + [6.0] * 3)
    assert np.all(np.abs(v) <= vmax + TOL)
    target = measured + out[:3] * 0.05
    assert EEF_SPACE.workspace.contains(target, eps=TOL), target
    if check_accel:
        dv = v - prev[:6] * SCALE / DT
        assert np.all(np.abs(dv) <= np.array([12.0] * 3 + [150.0] * 3) * DT + TOL)
        assert np.all(np.abs(out[:6] - prev[:6]) <= 1.5 + TOL)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=command_stream(7),
    start=st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3), st.floats(0.8, 1.3)).map(np.array),
)
def test_delta_eef_commands_never_violate_limits_on_a_tracking_arm(commands, start) -> None:
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(EEF_SPACE, control_hz=HZ), clock=clock)
    flt.reset()
    position, prev = start.copy(), np.zeros(7)
    for command in commands:
        clock.advance(DT)
        out = flt.filter(command, measured=position, observation_time=clock.t)
        check_eef_output(out, prev, position, check_accel=True)
        assert not flt.last_decision.accel_overridden
        position = position + out[:3] * 0.05  # an arm that reaches every commanded target
        prev = out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=st.lists(wild_command(7), min_size=1, max_size=40),
    positions=st.lists(
        st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3), st.floats(0.8, 1.3)).map(np.array),
        min_size=40,
        max_size=40,
    ),
)
def test_delta_eef_workspace_and_range_hold_even_when_the_arm_jumps(commands, positions) -> None:
    # The measured position is arbitrary here (a slipping arm, a bad sensor): range, speed and
    # workspace still hold; acceleration holds unless the filter reports that it had to override.
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(EEF_SPACE, control_hz=HZ), clock=clock)
    prev = np.zeros(7)
    for command, position in zip(commands, positions):
        clock.advance(DT)
        out = flt.filter(command, measured=position, observation_time=clock.t)
        check_eef_output(out, prev, position, check_accel=not flt.last_decision.accel_overridden)
        prev = out


def test_delta_eef_without_a_measured_position_does_not_translate() -> None:
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(EEF_SPACE, control_hz=HZ), clock=clock)
    out = flt.filter(np.array([1, 1, 1, 0.1, 0, 0, 1.0]), measured=None, observation_time=clock.t)
    assert np.all(out[:3] == 0.0) and out[3] > 0 and out[6] == 1.0


def test_libero_limits_pass_typical_expert_actions_unchanged() -> None:
    clock = FakeClock()
    flt = SafetyFilter(libero_limits(), clock=clock)
    position = np.array([0.0, 0.0, 1.0])
    for action in ([0.3, -0.2, 0.5, 0.0, 0.1, 0.0, -1.0], [0.5, 0.0, -0.5, 0.0, 0.0, 0.2, 1.0]):
        clock.advance(DT)
        out = flt.filter(np.array(action), measured=position, observation_time=clock.t)
        np.testing.assert_allclose(out, action, atol=1e-12)
        assert not flt.last_decision.modified


# ---------------------------------------------------------------------------------------------
# Watchdog and e-stop
# ---------------------------------------------------------------------------------------------


def moving_joint_filter() -> tuple[SafetyFilter, FakeClock, np.ndarray]:
    """A filter whose arm is moving at joint 0's top speed (1 rad/s)."""
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(JOINT_SPACE, control_hz=HZ), clock=clock)
    flt.reset(np.array([-0.9, 0.0, 0.0]))
    target = np.array([0.9, 0.0, 0.0, 0.04])
    for _ in range(10):
        clock.advance(DT)
        flt.filter(target, observation_time=clock.t)
    assert not flt.is_stopped
    return flt, clock, target


def run_until_stopped(flt: SafetyFilter, clock: FakeClock, step) -> list[np.ndarray]:
    outputs = []
    for _ in range(20):
        clock.advance(DT)
        outputs.append(step())
        assert flt.last_decision.held
    return outputs


def assert_controlled_stop_then_hold(outputs: list[np.ndarray]) -> None:
    q = np.array([o[:3] for o in outputs])
    speeds = np.abs(np.diff(q[:, 0])) / DT
    assert speeds[0] < 1.0 and np.all(np.diff(speeds) <= 1e-12)  # decelerates monotonically
    assert np.all(q[-5:] == q[-1])  # then holds that position exactly
    assert np.all(np.array([o[3] for o in outputs]) == outputs[0][3])  # gripper keeps its command


def test_watchdog_holds_on_stale_observations_and_resumes_when_fresh() -> None:
    flt, clock, target = moving_joint_filter()
    outputs = run_until_stopped(
        flt, clock, lambda: flt.filter(target, observation_time=clock.t - 0.5, command_time=clock.t)
    )
    assert "stale observation" in flt.last_decision.reasons[0]
    assert_controlled_stop_then_hold(outputs)
    clock.advance(DT)
    out = flt.filter(target, observation_time=clock.t, command_time=clock.t)
    assert not flt.last_decision.held and out[0] > outputs[-1][0]
    # A deadline of 0.25 s: 0.24 s old is fresh, 0.26 s old is stale.
    clock.advance(DT)
    flt.filter(target, observation_time=clock.t - 0.24)
    assert not flt.last_decision.held
    clock.advance(DT)
    flt.filter(target, observation_time=clock.t - 0.26)
    assert flt.last_decision.held


def test_watchdog_holds_when_the_policy_misses_its_deadline() -> None:
    flt, clock, target = moving_joint_filter()
    outputs = run_until_stopped(flt, clock, lambda: flt.filter(None, observation_time=clock.t))
    assert "missed its deadline" in flt.last_decision.reasons[0]
    assert_controlled_stop_then_hold(outputs)
    clock.advance(DT)
    flt.filter(target, observation_time=clock.t, command_time=clock.t - 0.3)  # due 0.3 s ago
    assert flt.last_decision.held and "late command" in flt.last_decision.reasons[0]


def test_estop_latches_until_explicit_reset() -> None:
    flt, clock, target = moving_joint_filter()
    flt.estop("operator pressed the button")
    outputs = run_until_stopped(flt, clock, lambda: flt.filter(target, observation_time=clock.t))
    assert_controlled_stop_then_hold(outputs)
    assert "operator pressed the button" in flt.last_decision.reasons[0]
    # Neither fresh valid commands, nor a motion reset, nor another estop() clear it.
    flt.reset(outputs[-1][:3])
    flt.estop("second reason")
    for _ in range(5):
        clock.advance(DT)
        out = flt.filter(target, observation_time=clock.t)
        assert flt.last_decision.held and np.all(out[:3] == outputs[-1][:3])
    assert flt.estop_reason == "operator pressed the button"
    flt.reset_estop()
    clock.advance(DT)
    out = flt.filter(target, observation_time=clock.t)
    assert not flt.estopped and not flt.last_decision.held and out[0] > outputs[-1][0]


def test_consecutive_rejected_commands_latch_the_estop() -> None:
    clock = FakeClock()
    flt = SafetyFilter(SafetyLimits(JOINT_SPACE, control_hz=HZ, max_consecutive_rejections=3), clock=clock)
    flt.reset(np.zeros(3))
    good = np.array([0.01, 0, 0, 0])
    for command in (np.full(4, np.nan), good, np.full(4, np.inf), np.zeros(5)):
        clock.advance(DT)
        flt.filter(command, observation_time=clock.t)
    assert not flt.estopped  # the good command in between reset the count
    clock.advance(DT)
    flt.filter(np.array([0, 0, np.nan, 0]), observation_time=clock.t)
    assert flt.estopped and "3 rejected commands" in flt.estop_reason
    assert flt.counts["rejected"] == 4


# ---------------------------------------------------------------------------------------------
# Pure functions and config validation
# ---------------------------------------------------------------------------------------------


def simulated_braking_distance(v: float, a: float, dt: float) -> float:
    """Distance of one step at v then decelerating by a*dt per step until stopped."""
    distance = 0.0
    while v > 0:
        distance += v * dt
        v -= a * dt
    return distance


@given(distance=st.floats(0.0, 5.0), accel=st.floats(0.1, 50.0))
def test_braking_speed_is_the_largest_speed_that_stops_in_time(distance, accel) -> None:
    v = float(braking_speed(np.array([distance]), np.array([accel]), DT)[0])
    assert simulated_braking_distance(v, accel, DT) <= distance + 1e-9
    assert simulated_braking_distance(v + 1e-6 + 1e-6 * v, accel, DT) > distance - 1e-9


def test_is_valid_command() -> None:
    assert is_valid_command(np.zeros(3), 3)
    assert is_valid_command([1, 2, 3], 3)
    assert not is_valid_command(np.zeros(4), 3)
    assert not is_valid_command(np.array([0, np.nan, 0]), 3)
    assert not is_valid_command(np.array([0, -np.inf, 0]), 3)
    assert not is_valid_command(np.array(["a", "b", "c"]), 3)
    assert not is_valid_command(np.array([True, False, True]), 3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GripperLimits(lower=1.0, upper=0.0), "GripperLimits.lower=1.0"),
        (lambda: GripperLimits(initial=5.0), "GripperLimits.initial=5.0"),
        (lambda: Box(lower=(0, 0), upper=(1, 1)), "expected 3 values"),
        (lambda: JointPositionSpace(lower=(0, 0), upper=(1, 1), max_velocity=(1,), max_acceleration=1), "max_velocity has 1 values"),
        (lambda: JointPositionSpace(lower=(0,), upper=(1,), max_velocity=-1, max_acceleration=1), "JointPositionSpace.max_velocity"),
        (lambda: JointPositionSpace(lower=(1,), upper=(0,), max_velocity=1, max_acceleration=1), "expected lower < upper"),
        (lambda: DeltaEEFSpace(1, 1, 1, math.nan), "DeltaEEFSpace.max_angular_acceleration=nan"),
        (lambda: SafetyLimits("joints", control_hz=20), "SafetyLimits.command_space='joints'"),
        (lambda: SafetyLimits(EEF_SPACE, control_hz=0), "SafetyLimits.control_hz=0"),
        (lambda: SafetyLimits(EEF_SPACE, control_hz=20, max_consecutive_rejections=0), "max_consecutive_rejections=0"),
    ],
)
def test_config_errors_name_the_field_and_value(build, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()
