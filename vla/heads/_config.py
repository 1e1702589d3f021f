"""Small helpers shared by the head configs: validation with clear messages, dict round trips.

Every config in `vla.heads` is a frozen dataclass validated in `__post_init__`. Errors name the
class, the field, the value found and what was expected, so a bad `config.json` is easy to fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


def check_int(obj: object, name: str, *, minimum: int = 1) -> None:
    """Raise unless `obj.<name>` is an int >= minimum (bools are refused: True is not a size)."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{type(obj).__name__}.{name}={value!r}: expected an integer >= {minimum}"
        )


def check_float(
    obj: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> None:
    """Raise unless `obj.<name>` is a real number inside the given bounds."""
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and minimum is not None:
        ok = value >= minimum if min_inclusive else value > minimum
    if ok and maximum is not None:
        ok = value <= maximum if max_inclusive else value < maximum
    if not ok:
        lo = "-inf" if minimum is None else f"{minimum}"
        hi = "inf" if maximum is None else f"{maximum}"
        left = "[" if min_inclusive and minimum is not None else "("
        right = "]" if max_inclusive and maximum is not None else ")"
        raise ValueError(
            f"{type(obj).__name__}.{name}={value!r}: expected a number in {left}{lo}, {hi}{right}"
        )


def check_choice(obj: object, name: str, choices: tuple[Any, ...]) -> None:
    """Raise unless `obj.<name>` is one of `choices`."""
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{type(obj).__name__}.{name}={value!r}: expected one of {list(choices)}")


def check_bool(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise ValueError(f"{type(obj).__name__}.{name}={value!r}: expected a bool")


def check_type_tag(obj: object, expected: str) -> None:
    """The `type` field discriminates the config union; it must match the class."""
    value = getattr(obj, "type")
    if value != expected:
        raise ValueError(
            f"{type(obj).__name__}.type={value!r}: expected {expected!r} "
            f"(use the config class that matches the type)"
        )


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (possibly nested) config dataclass; tuples become lists."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def from_dict(
    cls: type,
    data: Mapping[str, Any],
    *,
    nested: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Any:
    """Build `cls` from a dict, refusing unknown keys. Lists become tuples (JSON has no tuples);
    `nested` maps a field name to the function that builds that field from its sub-dict."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected a subset of {names}")
    nested = nested or {}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested and isinstance(value, Mapping):
            value = nested[key](value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
