"""Resource quantities as Colonies writes them: cpu ``"500m"`` or ``"2"``, mem ``"10Gi"``."""

from __future__ import annotations

import re

__all__ = [
    "format_bytes",
    "format_cpu",
    "human_bytes",
    "human_cpu",
    "parse_bytes",
    "parse_cpu_millis",
]

_CPU = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m?)\s*$")
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?)?[Bb]?\s*$")
_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def parse_cpu_millis(text: str) -> int:
    """``"500m"`` -> 500, ``"2"`` -> 2000, ``""`` -> 0. Raises ValueError with the reason."""
    if not text:
        return 0
    m = _CPU.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a cpu quantity such as '500m' or '2'")
    value = float(m[1])
    return int(value) if m[2] else int(value * 1000)


def parse_bytes(text: str) -> int:
    """``"10Gi"`` -> 10737418240, ``"512M"`` -> 512000000, ``""`` -> 0."""
    if not text:
        return 0
    m = _BYTES.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size such as '512Mi', '10Gi' or '1G'")
    return int(float(m[1]) * _UNITS[m[2]])


_BINARY = (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def format_cpu(millis: int) -> str:
    """The quantity for ``millis``, as Colonies writes it: 2000 -> ``"2"``, 1500 -> ``"1500m"``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    """Exactly ``n`` bytes in the largest binary unit that divides it: ``"10Gi"``, ``"24105Mi"``."""
    for unit, size in _BINARY:
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def human_cpu(millis: int) -> str:
    """Cores for people: 3500 -> ``"3.5"``, 4000 -> ``"4"``, 250 -> ``"0.25"``."""
    return f"{millis / 1000:g}"


def human_bytes(n: int) -> str:
    """A size for people, to one decimal: ``"8Gi"``, ``"23.5Gi"``, ``"512Mi"``."""
    for unit, size in _BINARY:
        if abs(n) >= size:
            return f"{round(n / size, 1):g}{unit}"
    return f"{n}B"
