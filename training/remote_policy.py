"""Scoring a policy server: `vla eval --policy ws://HOST:PORT [--remote-layout L]`.

Any server speaking openpi's websocket protocol (our `vla serve`, or openpi's `serve_policy.py`
with its LIBERO checkpoints) is driven through `robots.client.PolicyClient`, behind the same
`Policy` protocol the runner scores everything with. What is sent depends on the layout:

    vla            our data contract as it is: "observation.images.<camera>" uint8 (S, S, 3),
                   "observation.state" float32 (8,), "task" str; plus the initial noise (H, A)
                   when the server's metadata says `server.accepts_noise` (see below)
    openpi-libero  openpi's LIBERO example client: "observation/image" and
                   "observation/wrist_image" uint8 (224, 224, 3) (upright, as our env renders
                   them), "observation/state" float32 (8,) (eef pos, axis-angle, gripper qpos:
                   our state is that layout), "prompt" str

Noise. A diffusion/flow policy draws initial noise per call. Scored directly, `VLAPolicy` draws
it from a `policies.noise.NoiseStream` re-seeded from torch's global RNG at every episode start
(the runner seeds that RNG per episode). With the `vla` layout this adapter keeps the same stream
on the client side, sized from the server's metadata, and sends each draw, so a checkpoint scored
through `vla serve` gives the same episodes as the checkpoint scored directly (tested).

Latency. Every call's round trip is timed; the runner records per-episode inference time for
every policy (results.json `latency`), so a remote policy's cost lands there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from envs.keys import OBS_STATE, TASK, image_key

LAYOUTS = ("vla", "openpi-libero")
OPENPI_IMAGE_SIZE = 224  # openpi's LIBERO checkpoints take 224 x 224 images


def parse_ws_uri(uri: str) -> tuple[str, int]:
    """"ws://HOST:PORT" -> (host, port); a clear ValueError otherwise."""
    parsed = urlparse(uri)
    if parsed.scheme != "ws" or not parsed.hostname or parsed.port is None or parsed.path not in ("", "/"):
        raise ValueError(f"--policy {uri!r}: expected a policy server address ws://HOST:PORT")
    return parsed.hostname, parsed.port


@dataclass(frozen=True)
class RemotePolicySpec:
    """A policy server at ``uri`` (ws://HOST:PORT), fed the observation in ``layout``."""

    uri: str
    layout: str = "vla"
    token: str | None = None
    temporal_ensemble_coeff: float | None = None
    n_action_steps: int | None = None  # only used with temporal ensembling
    request_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        parse_ws_uri(self.uri)
        if self.layout not in LAYOUTS:
            raise ValueError(f"--remote-layout {self.layout!r}: expected one of {list(LAYOUTS)}")

    def build(self, env: Any) -> Any:
        policy: Any = RemotePolicy(self.uri, self.layout, token=self.token,
                                   request_timeout_s=self.request_timeout_s)
        if self.temporal_ensemble_coeff is not None:
            from policies import ActionChunkingPolicy

            policy = ActionChunkingPolicy(policy, n_action_steps=self.n_action_steps or 1,
                                          temporal_ensemble_coeff=self.temporal_ensemble_coeff)
        return policy

    def describe(self) -> dict:
        return {"kind": "remote", "uri": self.uri, "layout": self.layout,
                "temporal_ensemble_coeff": self.temporal_ensemble_coeff}


class RemotePolicy:
    """`Policy` over a websocket policy server (see the module docstring)."""

    def __init__(self, uri: str, layout: str = "vla", *, token: str | None = None,
                 request_timeout_s: float = 60.0, connect_timeout_s: float = 30.0) -> None:
        from robots.client import PolicyClient

        host, port = parse_ws_uri(uri)
        self.layout = layout
        self.client = PolicyClient(host, port, token=token, connect_timeout_s=connect_timeout_s,
                                   request_timeout_s=request_timeout_s)
        self.metadata = self.client.metadata  # what the server sent on connect
        self._noise = self._noise_stream(self.metadata) if layout == "vla" else None

    @staticmethod
    def _noise_stream(metadata: dict) -> Any:
        """The client-side noise stream, when the server takes noise and says its chunk shape."""
        server = metadata.get("server") or {}
        chunk, action_dim = metadata.get("chunk_size"), metadata.get("action_dim")
        if not server.get("accepts_noise") or not isinstance(chunk, int) or not isinstance(action_dim, int):
            return None
        from policies.noise import NoiseStream

        return NoiseStream(chunk, action_dim)

    def reset(self) -> None:
        if self._noise is not None:
            self._noise.reset()  # from torch's global RNG, as VLAPolicy.reset does
        self.client.reset()

    def infer(self, obs: dict) -> dict:
        payload = self._payload(obs)
        reply = self.client.infer(payload)
        return {"actions": np.asarray(reply["actions"], dtype=np.float32)}  # (H, A)

    def _payload(self, obs: dict) -> dict:
        if self.layout == "openpi-libero":
            return {
                "observation/image": _resize(obs[image_key("agentview")], OPENPI_IMAGE_SIZE),
                "observation/wrist_image": _resize(obs[image_key("wrist")], OPENPI_IMAGE_SIZE),
                "observation/state": np.asarray(obs[OBS_STATE], dtype=np.float32),
                "prompt": str(obs[TASK]),
            }
        payload = dict(obs)
        if self._noise is not None:
            payload["noise"] = self._noise.draw()[0].numpy()  # (H, A)
        return payload

    def close(self) -> None:
        self.client.close()


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (S, S, 3) -> uint8 (size, size, 3), bilinear (openpi's client resizes with PIL)."""
    if image.shape[:2] == (size, size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
