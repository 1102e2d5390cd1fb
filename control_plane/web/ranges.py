"""HTTP `Range: bytes=...` for downloads (RFC 9110 §14): one range, or the whole file.

`byte_range` is plain logic over the header and the file size; `ranged_file` answers a download
route with the whole immutable file (200) or the asked part streamed in chunks (206).
Invariants: a header that is not a single `bytes=` range (several ranges, another unit, garbage) is
ignored, answering the whole file, as the RFC allows; a syntactically valid range that starts past
the end is `RangeNotSatisfiableError` (416).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from litestar.response import File, Stream

from control_plane.errors import RangeNotSatisfiableError

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK_BYTES = 256 * 1024
_OCTETS = "application/octet-stream"


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


def ranged_file(
    path: Path, size: int, range_header: str | None, *, filename: str | None = None
) -> File | Stream:
    """The file at `path` (`size` bytes, immutable): whole, or the one range `range_header` asks for."""
    span = byte_range(range_header, size)
    if span is None:
        return File(path=path, filename=filename, media_type=_OCTETS, headers={"Accept-Ranges": "bytes"})
    first, last = span
    return Stream(
        _read_span(path, first, last),
        status_code=206,
        media_type=_OCTETS,
        headers={
            "Accept-Ranges": "bytes",
            "Content-Range": f"bytes {first}-{last}/{size}",
            "Content-Length": str(last - first + 1),
        },
    )


def _read_span(path: Path, first: int, last: int) -> Iterator[bytes]:
    """Bytes `first..last` (inclusive) of `path`, in chunks."""
    with path.open("rb") as f:
        f.seek(first)
        left = last - first + 1
        while left > 0 and (chunk := f.read(min(left, _CHUNK_BYTES))):
            left -= len(chunk)
            yield chunk
