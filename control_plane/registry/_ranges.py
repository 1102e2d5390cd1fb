"""HTTP `Range: bytes=...` for downloads (RFC 9110 §14): one range, or the whole file.

Plain logic over the header and the file size; the controller streams the bytes.
Invariants: a header that is not a single `bytes=` range (several ranges, another unit, garbage) is
ignored, answering the whole file, as the RFC allows; a syntactically valid range that starts past
the end is `RangeNotSatisfiableError` (416).
"""

from __future__ import annotations

import re

from control_plane.errors import RangeNotSatisfiableError

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive `(first, last)` byte positions asked for, or None for the whole file."""
    if header is None:
        return None
    match = _SINGLE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":  # suffix range: the last N bytes
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiableError(size)
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    last = size - 1 if last_text == "" else min(int(last_text), size - 1)
    if last_text != "" and int(last_text) < first:
        return None  # invalid range: ignored
    if first >= size:
        raise RangeNotSatisfiableError(size)
    return first, last
