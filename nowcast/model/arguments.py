"""Checks of the layers' constructor arguments, shared by nowcast.model.cell and
nowcast.model.encoder_forecaster: each returns the value, or raises a ValueError that says what
was received (STYLE.md, habit 4)."""

from __future__ import annotations


def positive_int(value, name: str) -> int:
    """`value` as an int, or a ValueError that says what was received."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


def int_pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width) as a pair of positive ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(
            f"`{name}` must be a positive integer or a pair of them (height, width). "
            f"Received: {name}={value!r}"
        )
    for item in pair:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ValueError(
                f"`{name}` must be a positive integer or a pair of them (height, width). "
                f"Received: {name}={value!r}"
            )
    return tuple(pair)


def flag(value, name: str) -> bool:
    """`value` if it is a bool, or a ValueError that says what was received."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value
