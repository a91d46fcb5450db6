"""Durations as people write them on command lines: '6h', '30m', '1h30m', '2d', '45s'."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str | float) -> float:
    """Seconds from '6h', '30m', '1h30m', '2d', '45s' or a plain number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        try:
            seconds = float(s)
        except ValueError:
            parts = _DURATION_PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ValueError(
                    f"duration {text!r}: expected e.g. '6h', '30m', '1h30m', '2d' or seconds"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"duration {text!r}: must be >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """The largest whole unit that ``parse_duration`` reads back: 21600 -> '6h', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
