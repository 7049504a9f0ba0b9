"""Numbers as an operator reads them: counts with the right plural, durations with units,
rounded floats, byte sizes. Only for human output; JSON keeps the exact values."""

from __future__ import annotations

from typing import Any


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 cluster`, `2 clusters`, `0 clusters` (`many` for irregular words)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def number(value: Any) -> str:
    """An int as it is; a float to at most 3 decimals without trailing zeros (sums of rounded
    milliseconds drift: 290.38800000000003 reads 290.388); anything else as text, None as `-`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def seconds(value: float) -> str:
    """A short duration: `2ms`, `625ms`, `1.81s`, `12.3s`, then as `uptime` from a minute up."""
    s = float(value)
    # each bound where the shorter form would round up to the next one (0.9996 is not `1000ms`)
    if s < 0.9995:
        return f"{s * 1000:.0f}ms"
    if s < 9.995:
        return f"{s:.2f}s"
    if s < 59.95:
        return f"{s:.1f}s"
    return uptime(s)


def uptime(value: float) -> str:
    """A long duration to its two largest units: `6s`, `1m05s`, `1h02m`, `3d04h`."""
    s = max(0, int(value))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    """Bytes in binary units: `237 B`, `1.2 KiB`, `3.4 GiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if round(value, 1) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
