"""Policy server + client on 127.0.0.1 (OS-assigned ports): correct actions, metadata on
connect, /healthz, auth, message size limit, and the must-show: a fuzzed stream of malformed
requests while a well-formed client keeps getting correct answers. Also the wire codec and the
numpy-only client import."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from robots import wire
from robots.client import PolicyClient, ServerError
from robots.server import FixedLatencyPolicy, PolicyServer, ServerConfig

MAX_BYTES = 256 * 1024


def good_obs(rng: np.random.Generator) -> dict:
    return {
        "observation.images.agentview": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=8).astype(np.float32),
        "task": "put the bowl on the plate",
    }


@pytest.fixture
def server():
    srv = PolicyServer(FixedLatencyPolicy(), ServerConfig(port=0, max_message_bytes=MAX_BYTES))
    srv.run_in_thread()
    yield srv
    srv.stop()


def test_client_gets_the_right_actions_and_metadata(server) -> None:
    rng = np.random.default_rng(0)
    with PolicyClient(port=server.port, connect_timeout_s=5) as client:
        assert client.metadata["server"]["protocol"] == "openpi-websocket-v1"
        assert client.metadata["server"]["max_message_bytes"] == MAX_BYTES
        for _ in range(5):
            obs = good_obs(rng)
            reply = client.infer(obs)
            np.testing.assert_array_equal(reply["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (8, 7)
            assert reply["server_timing"]["infer_ms"] >= 0


def test_healthz_answers_plain_http(server) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def test_token_auth_rejects_missing_and_wrong_tokens() -> None:
    srv = PolicyServer(FixedLatencyPolicy(), ServerConfig(port=0, token="s3cret")).run_in_thread()
    try:
        for token in (None, "wrong"):
            with pytest.raises(ServerError, match="401"):
                PolicyClient(port=srv.port, token=token, connect_timeout_s=2)
        obs = good_obs(np.random.default_rng(1))
        with PolicyClient(port=srv.port, token="s3cret") as client:
            assert client.infer(obs)["actions"].shape == (8, 7)
        # "Bearer <token>" works too (for generic HTTP tooling); health needs no token.
        with connect(f"ws://127.0.0.1:{srv.port}", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert isinstance(wire.unpackb(ws.recv(timeout=5)), dict)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5) as response:
            assert response.status == 200
        assert srv.counts["rejected_handshakes"] == 2
    finally:
        srv.stop()


def test_oversized_request_closes_that_connection_only(server) -> None:
    rng = np.random.default_rng(2)
    with PolicyClient(port=server.port) as big, PolicyClient(port=server.port) as other:
        obs = good_obs(rng)
        obs["observation.images.agentview"] = np.zeros((300, 300, 3), np.uint8)  # 270 kB > 256 kB
        with pytest.raises(ServerError, match="1009"):
            big.infer(obs)
        obs = good_obs(rng)
        np.testing.assert_array_equal(other.infer(obs)["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))
        # The refused client reconnects on its next request.
        np.testing.assert_array_equal(big.infer(obs)["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))


def test_observation_spec_errors_and_policy_errors_get_an_error_reply_and_the_connection_stays() -> None:
    from policies.protocol import PolicyMetadata

    class SpecPolicy(FixedLatencyPolicy):
        metadata = PolicyMetadata(camera_names=("agentview",), image_size=(16, 16), state_dim=8,
                                  action_dim=7, chunk_size=8)

        def infer(self, obs):
            if obs["task"] == "explode":
                raise RuntimeError("model blew up")
            return super().infer(obs)

    srv = PolicyServer(SpecPolicy(), ServerConfig(port=0, n_action_steps=5)).run_in_thread()
    try:
        rng = np.random.default_rng(3)
        with PolicyClient(port=srv.port) as client:
            assert client.metadata["state_dim"] == 8 and client.metadata["camera_names"] == ["agentview"]
            obs = good_obs(rng)
            obs["observation.state"] = np.zeros(5, np.float32)
            with pytest.raises(ServerError, match=r"bad request: invalid observation: 'observation.state'.*shape"):
                client.infer(obs)
            obs = good_obs(rng)
            del obs["observation.images.agentview"]
            with pytest.raises(ServerError, match="missing camera image"):
                client.infer(obs)
            with pytest.raises(ServerError, match="policy failed: RuntimeError: model blew up"):
                client.infer({**good_obs(rng), "task": "explode"})
            obs = good_obs(rng)
            reply = client.infer(obs)  # same connection, still serving
            np.testing.assert_array_equal(reply["actions"], FixedLatencyPolicy.expected(obs["observation.state"])[:5])
    finally:
        srv.stop()


def malformed_messages(rng: random.Random, n: int) -> list[tuple[str, bytes | str]]:
    """A seeded stream of malformed requests of every kind the server must survive."""
    good = wire.packb(good_obs(np.random.default_rng(0)))
    nd = {b"__ndarray__": True, b"data": b"\0" * 32, b"dtype": "<f4", b"shape": [8]}
    makers = [
        ("random bytes", lambda: rng.randbytes(rng.randint(0, 2000))),
        ("truncated", lambda: good[: rng.randint(1, len(good) - 1)]),
        ("bit flips", lambda: bytes(b ^ (1 << rng.randint(0, 7)) if rng.random() < 0.02 else b for b in good)),
        ("text frame", lambda: "observation.state=1,2,3"),
        ("not a dict", lambda: msgpack.packb(rng.choice([[1, 2, 3], 42, "obs", None, 3.5, b"raw"]))),
        ("int keys", lambda: msgpack.packb({1: 2})),
        ("missing keys", lambda: wire.packb({"task": "x"})),
        ("wrong types", lambda: wire.packb({**good_obs(np.random.default_rng(1)), "observation.state": "eight numbers"})),
        ("wrong shape", lambda: wire.packb({**good_obs(np.random.default_rng(1)), "observation.state": np.zeros((2, 4), np.float32)})),
        ("image as float", lambda: wire.packb({**good_obs(np.random.default_rng(1)), "observation.images.agentview": np.zeros((16, 16, 3))})),
        ("nan state", lambda: wire.packb({**good_obs(np.random.default_rng(1)), "observation.state": np.full(8, np.nan, np.float32)})),
        ("lying shape", lambda: msgpack.packb({"observation.state": {**nd, b"shape": [10**9, 10**9]}})),
        ("negative shape", lambda: msgpack.packb({"observation.state": {**nd, b"shape": [-8]}})),
        ("object dtype", lambda: msgpack.packb({"observation.state": {**nd, b"dtype": "|O"}})),
        ("bogus dtype", lambda: msgpack.packb({"observation.state": {**nd, b"dtype": "float9000"}})),
        ("data not bytes", lambda: msgpack.packb({"observation.state": {**nd, b"data": [1, 2]}})),
        ("deep nesting", lambda: b"\x91" * 5000 + b"\x00"),
        ("huge declared array", lambda: b"\xdb\xff\xff\xff\xff"),  # str32 claiming 4 GB
        ("huge real array", lambda: wire.packb({**good_obs(np.random.default_rng(1)), "observation.state": np.zeros(30_000)})),
    ]
    return [(name, make()) for name, make in (rng.choice(makers) for _ in range(n))]


def test_server_survives_a_fuzzed_stream_while_a_good_client_keeps_getting_correct_answers() -> None:
    """The must-show. Two fuzzing connections send ~400 malformed requests; every one gets an
    error reply; meanwhile a well-formed client's every answer is correct."""
    from policies.protocol import PolicyMetadata

    class SpecPolicy(FixedLatencyPolicy):
        metadata = PolicyMetadata(camera_names=("agentview",), image_size=(16, 16), state_dim=8,
                                  action_dim=7, chunk_size=8)

    srv = PolicyServer(SpecPolicy(latency_s=0.001), ServerConfig(port=0, max_message_bytes=MAX_BYTES)).run_in_thread()
    stop = threading.Event()
    good_results: list[bool] = []
    fuzz_failures: list[str] = []
    fuzz_replies = [0]

    def good_client() -> None:
        rng = np.random.default_rng(10)
        with PolicyClient(port=srv.port) as client:
            while not stop.is_set() and len(good_results) < 2000:
                obs = good_obs(rng)
                reply = client.infer(obs)
                good_results.append(bool(np.array_equal(reply["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))))

    streams = {seed: malformed_messages(random.Random(seed), 200) for seed in (1, 2)}

    def fuzzer(seed: int) -> None:
        stream = streams[seed]
        ws = connect(f"ws://127.0.0.1:{srv.port}", max_size=None)
        ws.recv(timeout=5)  # metadata
        for name, message in stream:
            try:
                ws.send(message)
                reply = ws.recv(timeout=5)
                if not (isinstance(reply, str) and reply.startswith("error: ")):
                    fuzz_failures.append(f"{name}: got {reply!r:.80}")
                fuzz_replies[0] += 1
            except ConnectionClosed as closed:
                # Only an oversized message may close the connection (1009); then reconnect.
                if closed.rcvd is None or closed.rcvd.code != 1009 or len(message) <= MAX_BYTES:
                    fuzz_failures.append(f"{name}: connection closed {closed}")
                ws = connect(f"ws://127.0.0.1:{srv.port}", max_size=None)
                ws.recv(timeout=5)
                fuzz_replies[0] += 1
        ws.close()

    threads = [threading.Thread(target=good_client)] + [threading.Thread(target=fuzzer, args=(s,)) for s in (1, 2)]
    try:
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(timeout=60)
        stop.set()
        threads[0].join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        assert fuzz_failures == []
        assert fuzz_replies[0] == 400
        assert len(good_results) >= 20 and all(good_results)
        # And a brand-new client is served normally afterwards.
        with PolicyClient(port=srv.port) as client:
            obs = good_obs(np.random.default_rng(99))
            np.testing.assert_array_equal(client.infer(obs)["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))
        assert srv.counts["errors"] >= 350
    finally:
        stop.set()
        srv.stop()


def test_runtime_drives_a_remote_policy_through_the_safety_filter(server) -> None:
    """Client + runtime + safety end to end on the real clock: a LIBERO-style arm moves."""
    from robots.protocol import Robot
    from robots.runtime import ControlRuntime, RuntimeConfig
    from robots.safety import SafetyFilter, libero_limits

    class DeltaArm(Robot):
        def __init__(self) -> None:
            self.position = np.array([0.0, 0.0, 1.0])
            self.sent = []

        def connect(self) -> None: ...

        def disconnect(self) -> None: ...

        def get_observation(self) -> dict:
            state = np.concatenate([self.position, np.zeros(5)]).astype(np.float32)
            return {"observation.images.agentview": np.zeros((16, 16, 3), np.uint8),
                    "observation.state": state, "task": "reach"}

        def send_action(self, action):
            self.sent.append(action)
            self.position = self.position + action[:3] * 0.05
            return action

    arm = DeltaArm()
    with PolicyClient(port=server.port) as client:
        report = ControlRuntime(arm, client, SafetyFilter(libero_limits()), RuntimeConfig(n_action_steps=4, max_steps=12)).run()
    assert report.steps == 12 and report.inferences >= 2 and report.policy_errors == 0
    moved = [a for a in arm.sent if np.any(a[:3] != 0)]
    assert moved and all(np.all(np.abs(a) <= 1.0) for a in arm.sent)


def _unit_stats(dim: int) -> dict:
    low, high = -np.ones(dim, np.float32), np.ones(dim, np.float32)
    return {"mean": 0 * low, "std": high, "min": low, "max": high, "q01": low, "q99": high}


def test_tiny_vla_policy_is_served_end_to_end(tmp_path) -> None:
    """The real tiny VLA policy behind the server."""
    import policies
    from vla import VLAModel, presets

    config = presets.get("tiny")
    model = VLAModel(config, stats={"observation.state": _unit_stats(config.state_dim),
                                    "action": _unit_stats(config.action_dim)})
    model.save_pretrained(tmp_path / "ckpt")
    policy = policies.VLAPolicy.from_checkpoint(tmp_path / "ckpt")
    srv = PolicyServer(policy, ServerConfig(port=0)).run_in_thread(timeout_s=60)
    try:
        meta = srv.metadata
        size = tuple(meta.get("image_size", (64, 64)))
        obs = {f"observation.images.{cam}": np.zeros((*size, 3), np.uint8) for cam in meta.get("camera_names", ["agentview"])}
        obs["observation.state"] = np.zeros(meta.get("state_dim", 8), np.float32)
        obs["task"] = "pick up the bowl"
        with PolicyClient(port=srv.port, request_timeout_s=60) as client:
            actions = client.infer(obs)["actions"]
        assert actions.ndim == 2 and np.all(np.isfinite(actions))
    finally:
        srv.stop()


def test_served_text_encoder_runs_once_per_instruction_across_clients(tmp_path, tiny_bert_dir) -> None:
    """A policy whose instruction a frozen encoder reads: two clients sending the same
    instruction cost one encoder run between them; a too-long instruction is an error reply
    naming 'task', and the connection stays usable."""
    import dataclasses

    from policies import VLAPolicy
    from vla import VLAModel, presets
    from vla.config import FrozenTextEncoderConfig

    base = presets.get("tiny")
    config = dataclasses.replace(base, language=dataclasses.replace(
        base.language, text_encoder=FrozenTextEncoderConfig(path=tiny_bert_dir, max_length=16)))
    model = VLAModel(config, stats={"observation.state": _unit_stats(8), "action": _unit_stats(7)})
    policy = VLAPolicy(model, seed=0)
    encoder = model.language.text_encoder
    srv = PolicyServer(policy, ServerConfig(port=0)).run_in_thread(timeout_s=60)
    try:
        obs = {f"observation.images.{c}": np.zeros((32, 32, 3), np.uint8) for c in config.camera_names}
        obs.update({"observation.state": np.zeros(8, np.float32), "task": "pick up the bowl"})
        for _ in range(2):
            with PolicyClient(port=srv.port, request_timeout_s=60) as client:
                for _ in range(3):
                    assert np.all(np.isfinite(client.infer(obs)["actions"]))
        assert encoder.cache_misses == 1
        with PolicyClient(port=srv.port, request_timeout_s=60) as client:
            with pytest.raises(ServerError, match="'task'.*tokens long"):
                client.infer({**obs, "task": "pick up the bowl " * 10})
            assert client.infer(obs)["actions"].shape == (config.chunk_size, 7)
    finally:
        srv.stop()


# --- wire codec --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.dtype(">f4")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_wire_round_trips_numpy_arrays_in_openpis_layout(array) -> None:
    message = wire.packb({"x": array, "s": np.float32(1.5), "t": "task"})
    decoded = wire.unpackb(message)
    np.testing.assert_array_equal(decoded["x"], array)
    assert decoded["x"].dtype == array.dtype and decoded["x"].shape == array.shape
    assert decoded["s"] == np.float32(1.5) and isinstance(decoded["s"], np.float32)
    raw = msgpack.unpackb(message, raw=False)["x"]  # what an openpi peer sees
    assert set(raw) == {b"__ndarray__", b"data", b"dtype", b"shape"}
    assert raw[b"dtype"] == array.dtype.str and list(raw[b"shape"]) == list(array.shape)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_wire_decoder_raises_only_wire_errors_on_garbage(data) -> None:
    try:
        wire.unpackb(data)
    except wire.WireError:
        pass


def test_wire_refuses_object_and_complex_arrays() -> None:
    with pytest.raises(wire.WireError, match="object"):
        wire.packb({"x": np.array([object()])})
    with pytest.raises(wire.WireError):
        wire.packb({"x": np.zeros(2, np.complex64)})


def test_client_and_runtime_import_without_torch() -> None:
    code = (
        "import sys, robots, robots.client, robots.runtime, robots.safety, robots.protocol, robots.wire;"
        "bad = [m for m in ('torch', 'vla', 'policies', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_client_gives_up_connecting_after_its_timeout() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="no policy server"):
        PolicyClient(port=port, connect_timeout_s=0.5)
    assert time.monotonic() - start < 5


def test_client_times_out_and_reconnects() -> None:
    srv = PolicyServer(FixedLatencyPolicy(latency_s=0.5), ServerConfig(port=0)).run_in_thread()
    try:
        with PolicyClient(port=srv.port, request_timeout_s=0.1) as client:
            obs = good_obs(np.random.default_rng(5))
            with pytest.raises(TimeoutError):
                client.infer(obs)
            client.request_timeout_s = 5.0
            np.testing.assert_array_equal(client.infer(obs)["actions"], FixedLatencyPolicy.expected(obs["observation.state"]))
    finally:
        srv.stop()


def test_server_config_validation() -> None:
    with pytest.raises(ValueError, match="ServerConfig.port=70000"):
        ServerConfig(port=70000)
    with pytest.raises(ValueError, match="ServerConfig.max_message_bytes=10"):
        ServerConfig(max_message_bytes=10)
    with pytest.raises(ValueError, match="ServerConfig.n_action_steps=0"):
        ServerConfig(n_action_steps=0)
    assert ServerConfig().host == "127.0.0.1"
