"""The policy server: a websocket server speaking openpi's policy-server wire protocol.

Protocol (the same as openpi's `WebsocketPolicyServer`, so openpi clients work unchanged):

    client connects to ws://HOST:PORT   (header "Authorization: Api-Key <token>" when a token is set)
    server -> client : metadata, one msgpack map, right after the handshake
    client -> server : an observation dict (msgpack, numpy arrays per robots.wire)
    server -> client : {"actions": float32 (H, A), "server_timing": {"infer_ms": ..,
                        "prev_total_ms": ..}, ...}   (one binary frame per request)
    ... repeated; requests on one connection are answered in order.

    GET /healthz on the same port -> 200 "OK" (no websocket, no token needed).

Initial noise (our extension; openpi clients never send it): an observation may carry "noise",
float (H, A), which is handed to the policy as `policy.infer(obs, noise=...)` instead of a draw
from the server's generator, when the policy's infer takes one (the metadata says so:
`server.accepts_noise`). `vla eval --policy ws://...` sends the noise stream the policy would
have drawn itself, so a served checkpoint scores exactly as the checkpoint scored directly.

Errors. A request that is not a binary frame, not valid msgpack, not a dict of observations,
fails the policy's observation check, or makes the policy raise, gets an error reply: a *text*
frame "error: <what went wrong>". openpi clients already treat a text frame as an error (they
raise with its content). Unlike openpi, the connection then STAYS OPEN: the error is about that
request, the framing is intact, and a robot client can fix its input and retry without a
reconnect. Other clients never notice. Two cases close the connection instead, because the
websocket layer cannot continue: a message over `max_message_bytes` (closed by the websockets
library with code 1009 "message too big" before it is read into memory) and a broken websocket
frame (1002 protocol error).

Security: binds 127.0.0.1 by default; expose it deliberately (--host 0.0.0.0) and then set a
token. The token is compared in constant time. msgpack cannot execute code (unlike pickle) and
`robots.wire` refuses arrays whose byte count does not match their declared shape.

Concurrency: policy calls run one at a time on a single worker thread (policies are stateful
and a GPU runs one batch at a time), so the event loop keeps answering other clients, health
checks and malformed requests while the model computes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import http
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from robots import wire
from robots.protocol import ACTIONS, Policy

logger = logging.getLogger(__name__)

PROTOCOL_NAME = "openpi-websocket-v1"
NOISE = "noise"  # optional observation entry: the initial noise (H, A) (module docstring)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20  # two 224x224 RGB images are 0.3 MB; 16 MB leaves room


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """host: interface to bind (127.0.0.1 = this machine only). port: 0 lets the OS choose.
    token: shared secret clients send as "Authorization: Api-Key <token>" (or "Bearer <token>");
    None disables auth. max_message_bytes: largest request accepted. n_action_steps: reply with
    only the first n actions of each chunk (None: the whole chunk)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    n_action_steps: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"ServerConfig.host={self.host!r}: expected a host name or IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port={self.port!r}: expected an int in [0, 65535]")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise ValueError("ServerConfig.token: expected a non-empty string or None")
        m = self.max_message_bytes
        if isinstance(m, bool) or not isinstance(m, int) or m < 1024:
            raise ValueError(f"ServerConfig.max_message_bytes={m!r}: expected an int >= 1024")
        n = self.n_action_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"ServerConfig.n_action_steps={n!r}: expected a positive int or None")


class RequestError(ValueError):
    """The request is malformed; the message goes back to the client."""


def _policy_metadata(policy: Any) -> dict[str, Any]:
    """The policy's self-description as a plain dict (PolicyMetadata.to_dict(), a dict, or {})."""
    metadata = getattr(policy, "metadata", None)
    if metadata is None:
        return {}
    if hasattr(metadata, "to_dict"):
        return dict(metadata.to_dict())
    if isinstance(metadata, Mapping):
        return dict(metadata)
    return {}


def _takes_noise(policy: Any) -> bool:
    """Whether ``policy.infer`` accepts a ``noise`` keyword (VLAPolicy does)."""
    import inspect

    try:
        return "noise" in inspect.signature(policy.infer).parameters
    except (TypeError, ValueError):
        return False


def _default_validator(policy: Any) -> Callable[[dict], None] | None:
    """`policies.validation.validate_observation` against the policy's spec, when it has one."""
    metadata = getattr(policy, "metadata", None)
    spec_fn = getattr(metadata, "observation_spec", None)
    if spec_fn is None:
        return None
    from policies.validation import validate_observation  # numpy only; lazy keeps this module light

    spec = spec_fn()
    return lambda obs: validate_observation(obs, spec)


def _clean_reply(reply: Any, n_action_steps: int | None) -> dict[str, Any]:
    """Check the policy's reply and keep only what travels on the wire.

    actions -> float32 (H, A), finite; other numpy/str/number values pass through; anything
    else (tensors, objects) is dropped rather than failing the encoder.
    """
    if not isinstance(reply, Mapping) or ACTIONS not in reply:
        raise RuntimeError(f"policy reply: got {type(reply).__name__} without {ACTIONS!r}")
    actions = np.asarray(reply[ACTIONS], dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[None]  # (A,) -> (1, A)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < 1:
        raise RuntimeError(f"policy reply: actions shape {actions.shape}; expected (H, A)")
    if not np.all(np.isfinite(actions)):
        raise RuntimeError("policy reply: actions hold NaN or inf")
    if n_action_steps is not None:
        actions = actions[:n_action_steps]
    out: dict[str, Any] = {ACTIONS: np.ascontiguousarray(actions)}
    for key, value in reply.items():
        if key == ACTIONS or not isinstance(key, str):
            continue
        if isinstance(value, (np.ndarray, np.generic, str, int, float, bool)) and getattr(
            value, "dtype", np.dtype("f4")
        ).kind in "biuf":
            out[key] = value
    return out


class PolicyServer:
    """Serve `policy` (anything with infer(obs) -> {"actions": (H, A)} and reset()).

    validate: observation check run before the policy, raising on a bad observation; by default
    the policy's `metadata.observation_spec()` check when it has one, else only "a dict with str
    keys" (the policy's own errors still become error replies).
    metadata: extra entries for the metadata sent on connect.

        server = PolicyServer(policy, ServerConfig(port=0))
        with server.run_in_thread():          # or: asyncio.run(server.serve_forever())
            print(server.port)
    """

    def __init__(
        self,
        policy: Policy,
        config: ServerConfig = ServerConfig(),
        *,
        validate: Callable[[dict], None] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.config = config
        self.validate = validate if validate is not None else _default_validator(policy)
        self._accepts_noise = _takes_noise(policy)
        self.metadata: dict[str, Any] = {
            **_policy_metadata(policy),
            **dict(metadata or {}),
            "server": {
                "protocol": PROTOCOL_NAME,
                "max_message_bytes": config.max_message_bytes,
                "n_action_steps": config.n_action_steps,
                "auth": config.token is not None,
                "accepts_noise": self._accepts_noise,
            },
        }
        wire.packb(self.metadata)  # fail now, not on the first connection, if it cannot be sent
        self.counts = {"connections": 0, "requests": 0, "errors": 0, "rejected_handshakes": 0}
        self.port: int | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._expected_auth = (
            None
            if config.token is None
            else (f"Api-Key {config.token}".encode(), f"Bearer {config.token}".encode())
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- HTTP side: health check and auth, before the websocket handshake ----------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._expected_auth is not None:
            given = request.headers.get("Authorization", "").encode()
            # Compare against every accepted form, always all of them, in constant time.
            matches = [hmac.compare_digest(given, expected) for expected in self._expected_auth]
            if not any(matches):
                self.counts["rejected_handshakes"] += 1
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    # -- websocket side ------------------------------------------------------------------------

    def _decode(self, message: Any) -> tuple[dict, Any]:
        """message -> (observation, initial noise or None)."""
        if isinstance(message, str):
            raise RequestError("expected a binary msgpack frame, got a text frame")
        try:
            obs = wire.unpackb(message)
        except wire.WireError as error:
            raise RequestError(str(error)) from None
        if not isinstance(obs, dict):
            raise RequestError(f"expected a dict of observations, got {type(obs).__name__}")
        bad = [k for k in obs if not isinstance(k, str)]
        if bad:
            raise RequestError(f"observation keys must be str, got {bad[:3]!r}")
        noise = obs.pop(NOISE, None)
        if noise is not None and not self._accepts_noise:
            raise RequestError(f"{NOISE!r}: this server's policy takes no initial noise "
                               "(metadata server.accepts_noise is false); send observations only")
        if self.validate is not None:
            try:
                self.validate(obs)
            except (ValueError, TypeError) as error:
                raise RequestError(f"invalid observation: {error}") from None
        return obs, noise

    def _infer(self, obs: dict, noise: Any = None) -> tuple[dict, float]:
        t = time.perf_counter()
        reply = self.policy.infer(obs) if noise is None else self.policy.infer(obs, noise=noise)
        seconds = time.perf_counter() - t
        return _clean_reply(reply, self.config.n_action_steps), seconds

    async def _handler(self, websocket: ServerConnection) -> None:
        self.counts["connections"] += 1
        loop = asyncio.get_running_loop()
        try:
            await websocket.send(wire.packb(self.metadata))
            prev_total_ms: float | None = None
            while True:
                message = await websocket.recv()
                start = time.perf_counter()
                self.counts["requests"] += 1
                try:
                    obs, noise = self._decode(message)
                    reply, infer_s = await loop.run_in_executor(self._executor, self._infer, obs, noise)
                except RequestError as error:
                    self.counts["errors"] += 1
                    await websocket.send(f"error: bad request: {error}")
                    continue
                except Exception as error:  # the policy failed on this input; keep serving
                    self.counts["errors"] += 1
                    logger.warning("policy failed on a request: %s: %s", type(error).__name__, error)
                    await websocket.send(f"error: policy failed: {type(error).__name__}: {error}")
                    continue
                timing = {"infer_ms": infer_s * 1e3}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply["server_timing"] = timing
                await websocket.send(wire.packb(reply))
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except ConnectionClosed:
            return

    # -- running -------------------------------------------------------------------------------

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (forever when None)."""
        self.policy.reset()
        cfg = self.config
        async with serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.max_message_bytes,
            compression=None,  # images do not compress; deflate only costs CPU (openpi does the same)
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            logger.info("policy server on ws://%s:%d", cfg.host, self.port)
            self._ready.set()
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()

    def run_in_thread(self, timeout_s: float = 10.0) -> PolicyServer:
        """Start serving in a background thread (its own event loop); use as a context manager."""

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.serve_forever(self._stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as error:  # surfaced by run_in_thread / stop
                self._startup_error = error
                self._ready.set()

        self._thread = threading.Thread(target=target, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"policy server did not start within {timeout_s} s")
        if self._startup_error is not None:
            raise RuntimeError(f"policy server failed to start: {self._startup_error}") from self._startup_error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a server started with run_in_thread (closes every connection)."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FixedLatencyPolicy:
    """A stand-in policy: sleeps `latency_s`, returns a deterministic chunk (H, A) from the state.

    actions[h, a] = mean(state) + 0.01 * h + 0.1 * a, so a client can check it got *its* answer.
    Used by the server tests and `vla bench serve`.
    """

    def __init__(self, chunk_size: int = 8, action_dim: int = 7, latency_s: float = 0.0) -> None:
        if not math.isfinite(latency_s) or latency_s < 0:
            raise ValueError(f"FixedLatencyPolicy.latency_s={latency_s!r}: expected >= 0")
        self.chunk_size, self.action_dim, self.latency_s = chunk_size, action_dim, latency_s
        self.calls = 0

    @staticmethod
    def expected(state: np.ndarray, chunk_size: int = 8, action_dim: int = 7) -> np.ndarray:
        base = float(np.mean(np.asarray(state, dtype=np.float64)))
        h = np.arange(chunk_size, dtype=np.float32)[:, None]
        a = np.arange(action_dim, dtype=np.float32)[None, :]
        return (base + 0.01 * h + 0.1 * a).astype(np.float32)  # (H, A)

    def infer(self, obs: dict) -> dict:
        self.calls += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        state = np.asarray(obs["observation.state"], dtype=np.float64)
        return {ACTIONS: self.expected(state, self.chunk_size, self.action_dim)}

    def reset(self) -> None:
        pass
