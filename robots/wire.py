"""msgpack + numpy codec of the policy server's wire protocol (openpi-compatible).

openpi's websocket policy server (`openpi_client.msgpack_numpy`) encodes numpy values inside
ordinary msgpack maps, and so do we, byte for byte the same layout, so that openpi clients can
talk to our server and our client to theirs:

    np.ndarray -> {b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": "<f4", b"shape": [H, A]}
    np.generic -> {b"__npgeneric__": True, b"data": <python scalar>,      b"dtype": "<f4"}

(`dtype` is numpy's `dtype.str`, which names the byte order.) Object, void (structured) and
complex dtypes are refused in both directions: they cannot round-trip through raw bytes safely.

Decoding is the part that faces the network, so `unpackb` validates everything before numpy
touches it and raises `WireError` (a ValueError) with a message naming the problem: the dtype
must parse and be a plain number/bool type, the shape must be a short list of non-negative ints,
and the byte count must equal prod(shape) * itemsize -- a message cannot make the server
allocate more than it sent. Decoded arrays are copies (writable, independent of the message).

Imports numpy and msgpack only (the robot computer runs this without torch).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

# numpy arrays may have at most 64 dimensions; real observations have at most 4.
MAX_NDIM = 32
_REFUSED_KINDS = ("O", "V", "c")  # object, void/structured, complex


class WireError(ValueError):
    """A message does not follow the wire protocol (bad msgpack, bad array encoding)."""


def _encode_default(obj: Any) -> Any:
    """msgpack `default` hook: numpy values -> openpi's array maps; anything else is an error."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise WireError(f"cannot encode dtype {obj.dtype} (object/void/complex are refused)")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            # tobytes() is always C order, which is what the decoder assumes.
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} on the wire")


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, str, numbers, bytes, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _parse_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str) or len(raw) > 16:
        raise WireError(f"array dtype {raw!r}: expected a short numpy dtype string like '<f4'")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError) as error:
        raise WireError(f"array dtype {raw!r}: not a numpy dtype ({error})") from None
    if dtype.kind in _REFUSED_KINDS or dtype.kind not in "biuf":
        raise WireError(f"array dtype {raw!r}: expected a bool, integer or float dtype")
    return dtype


def _decode_ndarray(obj: dict) -> np.ndarray:
    data = obj.get(b"data")
    shape = obj.get(b"shape")
    if not isinstance(data, bytes):
        raise WireError(f"array data: got {type(data).__name__}; expected bytes")
    dtype = _parse_dtype(obj.get(b"dtype"))
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise WireError(f"array shape {shape!r}: expected a list of at most {MAX_NDIM} ints")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"array shape {shape!r}: expected non-negative ints")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise WireError(
            f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes; "
            f"message holds {len(data)}"
        )
    # frombuffer is zero-copy and read-only; copy so the receiver owns a normal array.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _decode_generic(obj: dict) -> np.generic:
    dtype = _parse_dtype(obj.get(b"dtype"))
    value = obj.get(b"data")
    if dtype.kind == "b":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise WireError(
            f"numpy scalar data: got {type(value).__name__}; expected a value of dtype {dtype.str}"
        )
    try:
        return dtype.type(value)
    except (OverflowError, ValueError, TypeError) as error:
        raise WireError(f"numpy scalar {value!r} does not fit dtype {dtype.str}: {error}") from None


def _decode_hook(obj: dict) -> Any:
    """msgpack `object_hook`: openpi array maps -> numpy; other maps pass through."""
    if b"__ndarray__" in obj:
        return _decode_ndarray(obj)
    if b"__npgeneric__" in obj:
        return _decode_generic(obj)
    return obj


def unpackb(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Decode one message; raise WireError on anything malformed (never another exception type).

    max_bytes: refuse larger messages before parsing (the server's websocket layer already caps
    message size; this guards direct callers).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"message: got {type(data).__name__}; expected binary msgpack")
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        # strict_map_key keeps map keys to str/bytes (no unhashable-key tricks); the C unpacker
        # bounds nesting depth, so a deeply nested message raises instead of recursing forever.
        return msgpack.unpackb(
            data, object_hook=_decode_hook, raw=False, strict_map_key=True, use_list=True
        )
    except WireError:
        raise
    except Exception as error:  # msgpack raises many types (ExtraData, StackError, UnicodeDecodeError, ...)
        raise WireError(f"not a valid msgpack message: {type(error).__name__}: {error}") from None
