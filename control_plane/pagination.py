"""Offset pagination of every list: `PageRequest(limit, offset)`, answered with the total.

Invariant: `limit` is between 1 and `MAX_PAGE_LIMIT` and `offset` between 0 and `MAX_PAGE_OFFSET`
(the HTTP layer, `control_plane.web.pagination`, refuses anything else with a 400, never serving a
huge page); a page past the end is empty, with the real total.
"""

from __future__ import annotations

import msgspec

DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 500
MAX_PAGE_OFFSET = 2**31 - 1
"""Far past any real list, and well inside SQLite's 64-bit integers (a larger offset is a 400)."""


class PageRequest(msgspec.Struct, frozen=True, kw_only=True):
    limit: int = DEFAULT_PAGE_LIMIT
    offset: int = 0
