"""The control runtime: chunk scheduling (real-time chunking, blocking, temporal ensembling),
fixed rate, Ctrl-C handling and policy failures, with a fake robot, a fake policy and a fake
clock (no sleeping), plus one short run on the real clock and threads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robots import protocol
from robots.runtime import (
    ActionSchedule,
    BlockingInference,
    ControlRuntime,
    RealTimeChunking,
    RuntimeConfig,
    SimulatedLatencyFetcher,
    TemporalEnsemble,
)
from robots.safety import GripperLimits, JointPositionSpace, SafetyFilter, SafetyLimits

HZ = 20.0
DT = 1.0 / HZ


class FakeClock:
    """now()/sleep() on a virtual timeline; sleep advances it instantly."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.t += seconds

    __call__ = now


class FakeArm(protocol.Robot):
    """3 joints + gripper; reaches every command instantly; can fail on a given observation."""

    def __init__(self, clock: FakeClock, *, interrupt_at: int | None = None, obs_lag_s: float = 0.0) -> None:
        self.clock = clock
        self.q = np.zeros(3)
        self.sent: list[np.ndarray] = []
        self.observations = 0
        self.interrupt_at = interrupt_at
        self.obs_lag_s = obs_lag_s
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def get_observation(self) -> dict:
        self.observations += 1
        if self.interrupt_at is not None and self.observations == self.interrupt_at:
            raise KeyboardInterrupt  # what Ctrl-C does to the main thread
        return {
            protocol.OBS_STATE: self.q.astype(np.float32),
            protocol.TASK: "reach",
            protocol.OBS_TIMESTAMP: self.clock.now() - self.obs_lag_s,
        }

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self.sent.append(np.array(action))
        self.q = np.array(action[:3])
        return np.array(action)


class StepCodedPolicy:
    """Action i of the chunk computed at step s is [0.01 * (s + i), 0, 0, 0.04]: the executed
    value tells which step it was meant for, so scheduling errors are visible."""

    def __init__(self, clock: FakeClock, t0: float, chunk_size: int = 8, latency_s: float = 0.0) -> None:
        self.clock, self.t0, self.chunk_size, self.latency_s = clock, t0, chunk_size, latency_s
        self.starts: list[int] = []
        self.resets = 0

    def infer(self, obs: dict) -> dict:
        s = round((self.clock.now() - self.t0) / DT)
        self.starts.append(s)
        self.clock.sleep(self.latency_s)  # only matters for blocking inference
        actions = np.zeros((self.chunk_size, 4), np.float32)
        actions[:, 0] = 0.01 * (s + np.arange(self.chunk_size))
        actions[:, 3] = 0.04
        return {"actions": actions}

    def reset(self) -> None:
        self.resets += 1


def make_safety(clock: FakeClock) -> SafetyFilter:
    space = JointPositionSpace(
        lower=(-3.0,) * 3, upper=(3.0,) * 3, max_velocity=50.0, max_acceleration=1e4,
        gripper=GripperLimits(0.0, 0.08, initial=0.0),
    )
    return SafetyFilter(SafetyLimits(space, control_hz=HZ), clock=clock)


def test_real_time_chunking_follows_the_documented_timeline() -> None:
    # The module docstring's timeline: H = 8, n_action_steps = 6, prefetch_steps = 2, latency 2.
    clock = FakeClock()
    arm = FakeArm(clock)
    policy = StepCodedPolicy(clock, clock.t)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=6, execution=RealTimeChunking(2), max_steps=12)
    runtime = ControlRuntime(
        arm, policy, make_safety(clock), config, clock=clock,
        fetcher=SimulatedLatencyFetcher(clock, latency_s=2 * DT),
    )
    report = runtime.run()
    assert report.steps == 12 and report.stop_reason == "max_steps"
    assert policy.starts == [0, 4, 8] and policy.resets == 1
    executed = np.array([a[0] for a in arm.sent[:12]])
    # Steps 0, 1 hold at the start pose; from step 2 on every action is the one due at its step.
    np.testing.assert_allclose(executed[:2], 0.0)
    np.testing.assert_allclose(executed[2:], 0.01 * np.arange(2, 12), rtol=0, atol=1e-6)
    assert report.held_steps == 2 and report.dropped_actions == 6 and report.inferences == 3
    assert report.missed_ticks == 0 and report.achieved_hz == pytest.approx(HZ)
    assert report.duration_s == pytest.approx(12 * DT)


def test_late_chunks_drop_past_actions_and_the_arm_holds_when_the_queue_runs_dry() -> None:
    # Latency 5 steps > prefetch 2: each chunk arrives after the previous window ended.
    clock = FakeClock()
    arm = FakeArm(clock)
    policy = StepCodedPolicy(clock, clock.t)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=6, execution=RealTimeChunking(2), max_steps=30)
    runtime = ControlRuntime(
        arm, policy, make_safety(clock), config, clock=clock,
        fetcher=SimulatedLatencyFetcher(clock, latency_s=5 * DT),
    )
    report = runtime.run()
    executed = np.array([a[0] for a in arm.sent[:30]])
    # Each chunk arrives 5 steps after its observation with 1 action of its window left: that
    # one is executed at its own step, the 5 before it are dropped, and the arm holds meanwhile.
    assert policy.starts == [0, 5, 10, 15, 20, 25]
    fresh = [k for k in range(1, 30) if abs(executed[k] - 0.01 * k) < 1e-6]
    assert fresh == [5, 10, 15, 20, 25]
    assert report.held_steps == 25 and report.dropped_actions == 25 and report.inferences == 5
    for k in set(range(1, 30)) - set(fresh):  # a held step repeats the previous command
        assert executed[k] == executed[k - 1]


def test_blocking_inference_executes_every_action_of_the_window_in_order() -> None:
    clock = FakeClock()
    arm = FakeArm(clock)
    policy = StepCodedPolicy(clock, clock.t, latency_s=3 * DT)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=4, execution=BlockingInference(), max_steps=12)
    report = ControlRuntime(arm, policy, make_safety(clock), config, clock=clock).run()
    executed = np.array([a[0] for a in arm.sent[:12]])
    # Chunks computed at steps 0, 7, 14 (4 actions + 3 steps of thinking each), executed whole.
    assert policy.starts == [0, 7, 14]
    expected = np.concatenate([0.01 * (s + np.arange(4)) for s in (0, 7, 14)])
    np.testing.assert_allclose(executed, expected, rtol=0, atol=1e-6)
    assert report.dropped_actions == 0 and report.held_steps == 0
    assert report.missed_ticks == 9  # 3 inferences x 3 ticks without a command


def test_temporal_ensembling_weights_overlapping_chunks() -> None:
    schedule = ActionSchedule(n_action_steps=1, ensemble=TemporalEnsemble(coeff=0.5))
    for s in range(3):  # chunk s holds the value s at every step it covers (H = 3)
        schedule.add(np.full((3, 2), float(s)), start_step=s, now_step=s)
    w = np.exp(-0.5 * np.arange(3))
    assert schedule.due(2)[0] == pytest.approx((w * [0.0, 1.0, 2.0]).sum() / w.sum())
    assert schedule.due(3)[0] == pytest.approx((w[:2] * [1.0, 2.0]).sum() / w[:2].sum())
    assert schedule.due(5) is None
    plain = ActionSchedule(n_action_steps=2)
    plain.add(np.arange(8.0).reshape(4, 2), start_step=0, now_step=0)
    assert plain.due(1).tolist() == [2.0, 3.0] and plain.due(2) is None and plain.remaining(1) == 1


def test_runtime_with_temporal_ensembling_runs_and_smooths() -> None:
    clock = FakeClock()
    arm = FakeArm(clock)
    policy = StepCodedPolicy(clock, clock.t)
    config = RuntimeConfig(
        control_hz=HZ, n_action_steps=1, execution=RealTimeChunking(0),
        ensemble=TemporalEnsemble(0.01), max_steps=10,
    )
    runtime = ControlRuntime(arm, policy, make_safety(clock), config, clock=clock,
                             fetcher=SimulatedLatencyFetcher(clock, 0.0))
    report = runtime.run()
    # Every chunk agrees on the value for each step (step-coded), so the ensemble equals it.
    executed = np.array([a[0] for a in arm.sent[:10]])
    np.testing.assert_allclose(executed, 0.01 * np.arange(10), rtol=0, atol=1e-6)
    assert report.inferences == 10 and report.held_steps == 0


def test_ctrl_c_stops_the_arm_safely() -> None:
    clock = FakeClock()
    arm = FakeArm(clock, interrupt_at=15)
    policy = StepCodedPolicy(clock, clock.t)
    space = JointPositionSpace(
        lower=(-3.0,) * 3, upper=(3.0,) * 3, max_velocity=0.2, max_acceleration=1.0,
        gripper=GripperLimits(0.0, 0.08, initial=0.0),
    )
    safety = SafetyFilter(SafetyLimits(space, control_hz=HZ), clock=clock)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=6, max_steps=1000)
    runtime = ControlRuntime(arm, policy, safety, config, clock=clock,
                             fetcher=SimulatedLatencyFetcher(clock, 0.0))
    report = runtime.run()
    assert report.interrupted and report.stop_reason == "KeyboardInterrupt"
    assert report.steps == 14  # observation 1 serves step 0; observation 15 (step 14) raised
    after = np.array([a[0] for a in arm.sent[report.steps:]])
    assert report.stop_steps == len(after) >= 2
    speeds = np.abs(np.diff(np.concatenate([[arm.sent[report.steps - 1][0]], after]))) / DT
    assert speeds[0] > 0 and speeds[-1] == 0.0  # was moving, decelerated to a standstill
    assert np.all(np.diff(speeds) <= 1e-12) and safety.is_stopped


def test_repeated_policy_failures_end_the_run_with_the_estop_latched() -> None:
    clock = FakeClock()
    arm = FakeArm(clock)

    class Broken:
        def infer(self, obs):
            raise RuntimeError("CUDA error: device lost")

        def reset(self):
            pass

    safety = make_safety(clock)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=4, max_steps=100, max_consecutive_policy_errors=3)
    report = ControlRuntime(arm, Broken(), safety, config, clock=clock,
                            fetcher=SimulatedLatencyFetcher(clock, 0.0)).run()
    assert report.policy_errors == 3 and "device lost" in report.stop_reason
    assert safety.estopped and report.steps < 10
    assert all(np.all(a[:3] == 0.0) for a in arm.sent)  # never moved


def test_stale_observations_hold_the_arm() -> None:
    clock = FakeClock()
    arm = FakeArm(clock, obs_lag_s=1.0)  # every observation is a second old
    policy = StepCodedPolicy(clock, clock.t)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=4, max_duration_s=0.5)
    report = ControlRuntime(arm, policy, make_safety(clock), config, clock=clock,
                            fetcher=SimulatedLatencyFetcher(clock, 0.0)).run()
    assert report.stop_reason == "max_duration_s" and report.steps == 10
    assert report.held_steps == report.steps
    assert all(np.all(a[:3] == 0.0) for a in arm.sent)


def test_runtime_config_validation() -> None:
    with pytest.raises(ValueError, match="max_steps=None and max_duration_s=None"):
        RuntimeConfig()
    with pytest.raises(ValueError, match="RuntimeConfig.n_action_steps=0"):
        RuntimeConfig(n_action_steps=0, max_steps=1)
    with pytest.raises(ValueError, match="RealTimeChunking.prefetch_steps=-1"):
        RealTimeChunking(-1)
    with pytest.raises(ValueError, match="RuntimeConfig.execution='thread'"):
        RuntimeConfig(execution="thread", max_steps=1)
    clock = FakeClock()
    with pytest.raises(ValueError, match="control_hz"):
        ControlRuntime(FakeArm(clock), StepCodedPolicy(clock, 0), make_safety(clock),
                       RuntimeConfig(control_hz=10.0, max_steps=1))


def test_real_clock_and_thread_fetcher_run_at_the_target_rate() -> None:
    # Loose bounds: the machine is shared; this checks the real path works, not its speed.
    from robots.runtime import MonotonicClock

    real = MonotonicClock()
    arm = FakeArm(real)  # type: ignore[arg-type]
    policy = StepCodedPolicy(real, real.now())  # type: ignore[arg-type]
    safety = SafetyFilter(make_safety(FakeClock()).limits, clock=real.now)
    config = RuntimeConfig(control_hz=HZ, n_action_steps=4, max_steps=20)
    report = ControlRuntime(arm, policy, safety, config).run()
    assert report.steps == 20 and report.inferences >= 3
    assert 5.0 < report.achieved_hz < 25.0
    assert all(math.isfinite(v) for v in report.loop_latency_ms.values())
    assert all(math.isfinite(v) for v in report.inference_latency_ms.values())


def test_robot_protocol_context_manager_and_structural_check() -> None:
    arm = FakeArm(FakeClock())
    with arm as connected:
        assert connected is arm and arm.connected
    assert not arm.connected
    assert isinstance(arm, protocol.Robot)
    assert isinstance(StepCodedPolicy(FakeClock(), 0.0), protocol.Policy)


def test_feature_keys_match_the_model_side() -> None:
    from vla import features
    assert protocol.OBS_IMAGE_PREFIX == features.OBS_IMAGE_PREFIX
    assert protocol.OBS_STATE == features.OBS_STATE
    assert protocol.TASK == features.TASK
    assert protocol.ACTION == features.ACTION
