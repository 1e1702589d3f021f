"""The control runtime: a fixed-rate loop that executes action chunks on a robot, safely.

    every tick k (t_k = t_0 + k * dt on a monotonic clock):
        obs  = robot.get_observation()
        maybe start fetching the next chunk: policy.infer(obs)     (thread; real-time chunking)
        a_k  = the action scheduled for step k (or None if none)   (queue / temporal ensemble)
        safe = safety_filter.filter(a_k, ...)                      (limits, watchdog, e-stop)
        robot.send_action(safe)
        sleep until t_{k+1}

Time words (DESIGN.md): n_obs_steps = observation frames the model sees (1 here: the runtime
passes the newest observation), chunk_size H = actions per model call, n_action_steps =
actions executed from a chunk before the next one takes over.

Timeline, n_obs_steps = 1, chunk_size H = 8, n_action_steps = 6, prefetch_steps = 2, and an
inference latency of 2 steps (real-time chunking):

    step k        :  0  1  2  3  4  5  6  7  8  9 10 11
    fetch starts  :  o0          o4          o8             (C_s predicts a_s .. a_{s+7} from o_s)
    chunk arrives :        C0          C4          C8       (2 steps after its observation)
    executes      :  -  -  C0 C0 C0 C0 C4 C4 C4 C4 C8 C8    (- : nothing due yet, the arm holds)
    chunk index   :        2  3  4  5  2  3  4  5  2  3
    dropped       :  C0[0:2], C4[0:2], C8[0:2] were due before their chunk arrived
    never used    :  C_s[6:8] (outside the n_action_steps window)

A fetch starts when the newest chunk has <= prefetch_steps of its n_action_steps window left,
so the next chunk is computed while the current one runs (no stall when latency <=
prefetch_steps). Action i of a chunk is due at step s + i; actions whose step has passed when
the chunk arrives are dropped rather than executed late (the world moved on). A new chunk
replaces the rest of the older one. This is the scheduling half of real-time chunking (Black
et al. 2025); the other half -- inpainting the new chunk to agree with the old one's committed
actions -- lives in the model, not here.

`BlockingInference` is the classic alternative (LeRobot's and openpi's examples): when the
window is used up, call the policy inside the loop. No command is sent while the model thinks
(the robot's controller holds its last target; those ticks count as missed), then the chunk
starts at the step it arrives, so nothing is dropped.

Temporal ensembling (ACT, Zhao et al. 2023): every chunk still covering step k (over its whole
H) votes, with weights w_i = exp(-coeff * i), i = 0 the oldest chunk:

    step 5        :  C2[3] (w_0 = 1)  and  C4[1] (w_1 = exp(-coeff))
    a_5 = sum_i w_i * C_{s_i}[5 - s_i] / sum_i w_i

Ctrl-C: a KeyboardInterrupt anywhere in the loop ends it; the runtime then commands a
controlled stop through the safety filter (hold position) until the arm stands still or
`stop_steps` ticks pass, and returns its report with `interrupted=True`. The same stop runs at
every other exit (max steps, max duration, policy failure, robot error).

The clock and the chunk fetcher are injectable, so tests run the loop deterministically with a
fake clock and a simulated inference latency (`SimulatedLatencyFetcher`), without sleeping.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, Union

import numpy as np

from robots.protocol import ACTIONS, OBS_STATE, OBS_TIMESTAMP, Policy, Robot
from robots.safety import SafetyFilter

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RealTimeChunking:
    """Fetch the next chunk in a background thread while the current one executes.

    prefetch_steps: start the fetch when this many actions of the current window remain; set it
    to at least the inference latency in steps so the queue never runs dry.
    """

    prefetch_steps: int = 2

    def __post_init__(self) -> None:
        n = self.prefetch_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"RealTimeChunking.prefetch_steps={n!r}: expected an int >= 0")


@dataclasses.dataclass(frozen=True)
class BlockingInference:
    """Call the policy inside the loop when the window is used up; the arm holds meanwhile."""


@dataclasses.dataclass(frozen=True)
class TemporalEnsemble:
    """ACT-style ensembling over every chunk covering a step; weights exp(-coeff * i), oldest i=0."""

    coeff: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.coeff, bool) or not isinstance(self.coeff, (int, float)) or not math.isfinite(self.coeff):
            raise ValueError(f"TemporalEnsemble.coeff={self.coeff!r}: expected a finite float")


Execution = Union[RealTimeChunking, BlockingInference]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """The control loop. At least one of max_steps / max_duration_s bounds every run.

    control_hz: loop rate. n_action_steps: actions used from each chunk before the next one
    takes over. stop_steps: most ticks spent bringing the arm to rest when the run ends.
    max_consecutive_policy_errors: stop the run (and latch the e-stop) after this many failed
    inferences in a row.
    """

    control_hz: float = 20.0
    n_action_steps: int = 8
    execution: Execution = RealTimeChunking()
    ensemble: TemporalEnsemble | None = None
    max_steps: int | None = None
    max_duration_s: float | None = None
    stop_steps: int = 40
    max_consecutive_policy_errors: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.control_hz, bool) or not isinstance(self.control_hz, (int, float)) or not (
            math.isfinite(self.control_hz) and self.control_hz > 0
        ):
            raise ValueError(f"RuntimeConfig.control_hz={self.control_hz!r}: expected a finite number > 0")
        for name in ("n_action_steps", "stop_steps", "max_consecutive_policy_errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RuntimeConfig.{name}={value!r}: expected a positive int")
        if not isinstance(self.execution, (RealTimeChunking, BlockingInference)):
            raise ValueError(
                f"RuntimeConfig.execution={self.execution!r}: expected RealTimeChunking or BlockingInference"
            )
        if self.ensemble is not None and not isinstance(self.ensemble, TemporalEnsemble):
            raise ValueError(f"RuntimeConfig.ensemble={self.ensemble!r}: expected TemporalEnsemble or None")
        if self.max_steps is None and self.max_duration_s is None:
            raise ValueError(
                "RuntimeConfig.max_steps=None and max_duration_s=None: expected at least one bound"
            )
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(f"RuntimeConfig.max_steps={self.max_steps!r}: expected a positive int or None")
        if self.max_duration_s is not None and not (
            isinstance(self.max_duration_s, (int, float)) and self.max_duration_s > 0
        ):
            raise ValueError(
                f"RuntimeConfig.max_duration_s={self.max_duration_s!r}: expected a number > 0 or None"
            )

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


# ----------------------------------------------------------------------------------------------
# Clock and chunk fetchers (injectable)
# ----------------------------------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: time.monotonic (never jumps with wall-clock changes)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Fetcher(Protocol):
    """Runs one policy call at a time, off the control loop."""

    def submit(self, fn: Callable[[], dict]) -> None: ...

    def poll(self) -> tuple[bool, dict | None, BaseException | None]:
        """(finished, result, error); a finished call is handed out once, then the fetcher is idle."""
        ...

    @property
    def busy(self) -> bool: ...


class ThreadFetcher:
    """One daemon thread per call; the loop polls without blocking.

    Daemon, so an interpreter exit never waits for a hung remote policy call.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: dict | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def submit(self, fn: Callable[[], dict]) -> None:
        if self._thread is not None:
            raise RuntimeError("ThreadFetcher.submit: a call is already in flight")
        self._done.clear()
        self._result, self._error = None, None

        def work() -> None:
            try:
                self._result = fn()
            except BaseException as error:  # handed to the loop, which decides what to do
                self._error = error
            finally:
                self._done.set()

        self._thread = threading.Thread(target=work, name="policy-fetch", daemon=True)
        self._thread.start()

    def poll(self) -> tuple[bool, dict | None, BaseException | None]:
        if self._thread is None or not self._done.is_set():
            return False, None, None
        self._thread = None
        return True, self._result, self._error


class SimulatedLatencyFetcher:
    """Deterministic stand-in for ThreadFetcher: runs the call at once, in the caller's thread,
    and reports it finished only `latency_s` later on `clock` (for tests and latency studies)."""

    def __init__(self, clock: Clock, latency_s: float) -> None:
        self.clock = clock
        self.latency_s = float(latency_s)
        self._ready_at: float | None = None
        self._result: dict | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._ready_at is not None

    def submit(self, fn: Callable[[], dict]) -> None:
        if self._ready_at is not None:
            raise RuntimeError("SimulatedLatencyFetcher.submit: a call is already in flight")
        self._result, self._error = None, None
        try:
            self._result = fn()
        except Exception as error:
            self._error = error
        self._ready_at = self.clock.now() + self.latency_s

    def poll(self) -> tuple[bool, dict | None, BaseException | None]:
        # The 1e-9 absorbs float error in t0 + k * dt against submit time + latency.
        if self._ready_at is None or self.clock.now() + 1e-9 < self._ready_at:
            return False, None, None
        self._ready_at = None
        return True, self._result, self._error


# ----------------------------------------------------------------------------------------------
# The action schedule: which action is due at step k
# ----------------------------------------------------------------------------------------------


class ActionSchedule:
    """Chunks keyed by the step their action 0 is due at; answers "what is due at step k".

    n_action_steps: without ensembling, only the newest chunk's window [s, s + n_action_steps)
    is used. ensemble: with it, every chunk votes over its whole chunk (H steps).
    """

    def __init__(self, n_action_steps: int, ensemble: TemporalEnsemble | None = None) -> None:
        self.n_action_steps = n_action_steps
        self.ensemble = ensemble
        self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self.dropped = 0  # actions of a window that were never executed because they came too late

    def add(self, actions: np.ndarray, start_step: int, now_step: int) -> None:
        """Add a chunk (H, A) whose action 0 is due at `start_step`; `now_step` is the current step."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]  # (A,) -> (1, A): a single-step policy
        if actions.ndim != 2 or actions.shape[0] < 1:
            raise ValueError(f"policy actions: got shape {actions.shape}; expected (H, A)")
        window = min(self.n_action_steps, actions.shape[0])
        self.dropped += int(np.clip(now_step - start_step, 0, window))
        self._chunks.append((start_step, actions))
        # Keep only chunks that can still contribute (ensembling needs the older ones too).
        horizon = (lambda s, a: s + a.shape[0]) if self.ensemble else (lambda s, a: s + window)
        while len(self._chunks) > 1 and (
            self.ensemble is None or horizon(*self._chunks[0]) <= now_step
        ):
            self._chunks.popleft()

    def remaining(self, step: int) -> int:
        """Actions left in the newest chunk's window from `step` on (0 when there is none)."""
        if not self._chunks:
            return 0
        start, actions = self._chunks[-1]
        end = start + min(self.n_action_steps, actions.shape[0])
        return max(0, end - max(step, start))

    def due(self, step: int) -> np.ndarray | None:
        """The action (A,) due at `step`, or None."""
        if not self._chunks:
            return None
        if self.ensemble is None:
            start, actions = self._chunks[-1]
            i = step - start
            if 0 <= i < min(self.n_action_steps, actions.shape[0]):
                return actions[i]
            return None
        votes = [a[step - s] for s, a in self._chunks if 0 <= step - s < a.shape[0]]
        if not votes:
            return None
        weights = np.exp(-self.ensemble.coeff * np.arange(len(votes)))  # (V,), oldest first
        return (weights[:, None] * np.stack(votes)).sum(0) / weights.sum()


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _percentiles_ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan}
    values = np.asarray(samples) * 1e3
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


@dataclasses.dataclass
class RunReport:
    """What a run did. Latencies in ms: loop = one tick's work, inference = one policy call."""

    steps: int = 0
    duration_s: float = 0.0
    achieved_hz: float = 0.0
    target_hz: float = 0.0
    loop_latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    inference_latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    inferences: int = 0
    policy_errors: int = 0
    held_steps: int = 0
    dropped_actions: int = 0
    missed_ticks: int = 0
    stop_steps: int = 0
    interrupted: bool = False
    stop_reason: str = ""
    sent_actions: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("sent_actions")
        return out


# ----------------------------------------------------------------------------------------------
# The runtime
# ----------------------------------------------------------------------------------------------


def measured_from_observation(obs: dict, start: int, size: int) -> np.ndarray | None:
    """observation.state[start : start + size] as float64, or None when missing/short/non-finite."""
    state = obs.get(OBS_STATE) if isinstance(obs, dict) else None
    if state is None:
        return None
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    if state.shape[0] < start + size:
        return None
    out = state[start : start + size]
    return out if np.all(np.isfinite(out)) else None


class ControlRuntime:
    """Drive `robot` with `policy` through `safety` at a fixed rate. See the module docstring.

    robot: a connected Robot. policy: anything with infer(obs) -> {"actions": (H, A)} and reset().
    safety: the SafetyFilter (its clock should be the same clock as the runtime's).
    clock: now()/sleep(); MonotonicClock by default. fetcher: how chunks are fetched in
    RealTimeChunking mode; a ThreadFetcher by default.
    """

    def __init__(
        self,
        robot: Robot,
        policy: Policy,
        safety: SafetyFilter,
        config: RuntimeConfig,
        *,
        clock: Clock | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        if abs(safety.limits.control_hz - config.control_hz) > 1e-9:
            raise ValueError(
                f"RuntimeConfig.control_hz={config.control_hz} differs from the safety limits' "
                f"control_hz={safety.limits.control_hz}; the limits are defined per step"
            )
        self.robot = robot
        self.policy = policy
        self.safety = safety
        self.config = config
        self.clock = clock or MonotonicClock()
        self.fetcher = fetcher or ThreadFetcher()
        space = safety.limits.command_space
        self._measured_slice = (space.state_index, space.measured_dim)

    def _measured(self, obs: dict) -> np.ndarray | None:
        return measured_from_observation(obs, *self._measured_slice)

    def _observe(self) -> tuple[dict, float]:
        obs = self.robot.get_observation()
        stamp = obs.get(OBS_TIMESTAMP) if isinstance(obs, dict) else None
        t_obs = float(stamp) if isinstance(stamp, (int, float)) else self.clock.now()
        return obs, t_obs

    def _timed_infer(self, obs: dict, start_step: int) -> Callable[[], dict]:
        def call() -> dict:
            t = time.perf_counter()
            reply = self.policy.infer(obs)
            return {"reply": reply, "start_step": start_step, "seconds": time.perf_counter() - t}

        return call

    def run(self) -> RunReport:
        """Run until max_steps / max_duration_s, Ctrl-C, or a policy failure; then stop safely."""
        cfg = self.config
        dt = cfg.dt
        report = RunReport(target_hz=cfg.control_hz)
        schedule = ActionSchedule(cfg.n_action_steps, cfg.ensemble)
        loop_latencies: list[float] = []
        infer_latencies: list[float] = []
        consecutive_errors = 0
        blocking = isinstance(cfg.execution, BlockingInference)
        threshold = 0 if blocking else cfg.execution.prefetch_steps

        self.policy.reset()
        obs, t_obs = self._observe()
        self.safety.reset(self._measured(obs))
        t0 = self.clock.now()
        k = 0

        def accept(result: dict | None, error: BaseException | None, step_now: int) -> None:
            nonlocal consecutive_errors
            if error is None:
                try:
                    actions = np.asarray(result["reply"][ACTIONS], dtype=np.float64)
                    start = step_now if blocking else result["start_step"]
                    schedule.add(actions, start, step_now)
                    infer_latencies.append(result["seconds"])
                    report.inferences += 1
                    consecutive_errors = 0
                    return
                except Exception as bad_reply:  # a reply without a usable (H, A) "actions"
                    error = bad_reply
            if isinstance(error, KeyboardInterrupt):
                raise error
            report.policy_errors += 1
            consecutive_errors += 1
            report.stop_reason = f"policy error: {type(error).__name__}: {error}"

        try:
            while True:
                if cfg.max_steps is not None and report.steps >= cfg.max_steps:
                    report.stop_reason = "max_steps"
                    break
                if cfg.max_duration_s is not None and self.clock.now() - t0 >= cfg.max_duration_s:
                    report.stop_reason = "max_duration_s"
                    break
                if consecutive_errors >= cfg.max_consecutive_policy_errors:
                    self.safety.estop(report.stop_reason)
                    break
                # Fixed rate on the monotonic clock: if we fell more than a tick behind, skip
                # the missed ticks (their actions are dropped) instead of bunching them up.
                behind = int(math.floor((self.clock.now() - t0) / dt + 1e-9))
                if behind > k:
                    report.missed_ticks += behind - k
                    k = behind
                tick_start = self.clock.now()
                if report.steps > 0:
                    obs, t_obs = self._observe()

                if blocking:
                    if schedule.remaining(k) == 0:
                        t = time.perf_counter()
                        try:
                            reply = self.policy.infer(obs)
                            result, error = {"reply": reply, "start_step": k, "seconds": time.perf_counter() - t}, None
                        except Exception as failure:
                            result, error = None, failure
                        # The arm held while the model thought: re-anchor to the current tick
                        # and look again before acting.
                        now_k = int(math.floor((self.clock.now() - t0) / dt + 1e-9))
                        if now_k > k:
                            report.missed_ticks += now_k - k
                            k = now_k
                        accept(result, error, k)
                        obs, t_obs = self._observe()
                else:
                    finished, result, error = self.fetcher.poll()
                    if finished:
                        accept(result, error, k)
                    if not self.fetcher.busy and schedule.remaining(k) <= threshold:
                        self.fetcher.submit(self._timed_infer(obs, k))
                        # A zero-latency fetcher may be done already: use it this very tick.
                        finished, result, error = self.fetcher.poll()
                        if finished:
                            accept(result, error, k)

                command = schedule.due(k)
                safe = self.safety.filter(
                    command,
                    measured=self._measured(obs),
                    observation_time=t_obs,
                    command_time=t0 + k * dt,
                )
                report.held_steps += int(self.safety.last_decision.held)
                sent = self.robot.send_action(safe)
                report.sent_actions.append(np.asarray(sent))
                report.steps += 1
                loop_latencies.append(self.clock.now() - tick_start)
                k += 1
                self.clock.sleep(t0 + k * dt - self.clock.now())
        except KeyboardInterrupt:
            report.interrupted = True
            report.stop_reason = "KeyboardInterrupt"
        except BaseException:
            self._stop(report)
            raise
        report.duration_s = self.clock.now() - t0
        report.achieved_hz = report.steps / report.duration_s if report.duration_s > 0 else 0.0
        self._stop(report)
        report.dropped_actions = schedule.dropped
        report.loop_latency_ms = _percentiles_ms(loop_latencies)
        report.inference_latency_ms = _percentiles_ms(infer_latencies)
        return report

    def _stop(self, report: RunReport) -> None:
        """Controlled stop: hold commands at the control rate until the arm stands still.

        Further Ctrl-C presses are absorbed here on purpose: abandoning a half-finished stop would
        leave the arm at its last commanded velocity. The stop is bounded by `stop_steps` ticks.
        """
        dt = self.config.dt
        for _ in range(self.config.stop_steps):
            try:
                t = self.clock.now()
                measured = None
                try:
                    measured = self._measured(self.robot.get_observation())
                except Exception:
                    pass  # keep stopping even if sensing failed
                try:
                    sent = self.robot.send_action(self.safety.hold(measured=measured))
                except Exception:
                    break  # the robot is gone; nothing more can be commanded
                report.sent_actions.append(np.asarray(sent))
                report.stop_steps += 1
                if self.safety.is_stopped:
                    break
                self.clock.sleep(t + dt - self.clock.now())
            except KeyboardInterrupt:
                report.interrupted = True
                continue
