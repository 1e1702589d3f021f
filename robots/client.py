"""The robot-side client of the policy server: numpy, msgpack and websockets only (never torch).

    from robots.client import PolicyClient
    with PolicyClient("192.168.1.20", 8000, token="...") as policy:   # a `Policy`
        print(policy.metadata)                                         # sent by the server
        chunk = policy.infer(obs)["actions"]                           # float32 (H, A)

It implements the Policy protocol (infer / reset), so the control runtime drives a remote model
exactly like a local one. It speaks openpi's wire protocol (see robots/server.py), so it can also
drive an openpi policy server, and openpi's client can drive ours.

Failure behaviour:
- the server answers a bad request with a text frame: `infer` raises ServerError with its text;
  the connection stays usable.
- no reply within `request_timeout_s`: raises TimeoutError and drops the connection, so a late
  reply can never be mistaken for the answer to the next request; the next `infer` reconnects.
- the connection closed (server restart, message too big): raises ServerError (with the close
  code, 1009 for an oversized request); the next `infer` reconnects.

`reset()` does nothing remotely: the served policy answers each observation with a whole chunk,
and chunk state (queue, ensembling) lives in the robot-side runtime (openpi's client does the
same).
"""

from __future__ import annotations

import time
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from robots import wire


class ServerError(RuntimeError):
    """The policy server refused a request or dropped the connection."""


class PolicyClient:
    """A `Policy` whose infer() runs on a remote policy server.

    host, port: the server. token: shared secret (sent as "Authorization: Api-Key <token>").
    connect_timeout_s: how long to keep retrying the first connection (the server may still be
    loading its model). request_timeout_s: longest wait for one reply.
    max_message_bytes: largest reply accepted (None: no limit).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        token: str | None = None,
        connect_timeout_s: float = 30.0,
        request_timeout_s: float = 10.0,
        max_message_bytes: int | None = 64 * 2**20,
    ) -> None:
        self.uri = f"ws://{host}:{port}"
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self._connect()

    def _connect(self) -> None:
        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        deadline = time.monotonic() + self.connect_timeout_s
        delay = 0.05
        while True:
            try:
                ws = connect(
                    self.uri,
                    additional_headers=headers,
                    compression=None,
                    max_size=self.max_message_bytes,
                    open_timeout=max(0.1, min(10.0, deadline - time.monotonic())),
                )
                break
            except InvalidStatus as error:  # e.g. 401: retrying will not help
                raise ServerError(
                    f"{self.uri} refused the connection: HTTP {error.response.status_code} "
                    f"{error.response.body.decode(errors='replace').strip()}"
                ) from None
            except (OSError, TimeoutError) as error:
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(
                        f"no policy server at {self.uri} after {self.connect_timeout_s} s: {error}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            first = ws.recv(timeout=self.request_timeout_s)
            metadata = wire.unpackb(first)
        except Exception as error:
            ws.close()
            raise ServerError(f"{self.uri} sent no valid metadata on connect: {error}") from None
        if not isinstance(metadata, dict):
            ws.close()
            raise ServerError(f"{self.uri} metadata: expected a map, got {type(metadata).__name__}")
        self._ws, self.metadata = ws, metadata

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None

    def infer(self, obs: dict) -> dict:
        """Send one observation; return the server's reply ({"actions": (H, A), "server_timing": ...})."""
        payload = wire.packb(obs)  # encode first: an unencodable obs must not cost the connection
        if self._ws is None:
            self._connect()
        ws = self._ws
        try:
            ws.send(payload)
            reply = ws.recv(timeout=self.request_timeout_s)
        except TimeoutError:
            self._drop()
            raise TimeoutError(
                f"no reply from {self.uri} within {self.request_timeout_s} s; reconnecting next time"
            ) from None
        except ConnectionClosed as error:
            self._drop()
            frame = error.rcvd or error.sent  # the server's close frame, else ours (e.g. reply too big)
            code = frame.code if frame is not None else None
            reason = frame.reason if frame is not None else ""
            raise ServerError(f"{self.uri} closed the connection (code {code}) {reason}".strip()) from None
        if isinstance(reply, str):
            raise ServerError(reply)
        return wire.unpackb(reply)

    def reset(self) -> None:
        """Nothing to reset remotely (see the module docstring)."""

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
