"""Byte sizes on the command line ("80GiB", "1TiB", "512MB") and in tables."""
from __future__ import annotations

import re

from ..errors import InputError

UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
         "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str, flag: str) -> int:
    """Bytes of a size string such as "80GiB" (binary units) or "80GB" (decimal); must be > 0."""
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in UNITS:
        raise InputError(flag, f"'{text}' is not a size (a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise InputError(flag, f"'{text}' is no memory at all; give the memory each device or node has")
    return size


def format_size(size: float) -> str:
    """Binary units with 2 decimals: 1.50 GiB."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"
