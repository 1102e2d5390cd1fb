"""Offset pagination of every list: `PageRequest(limit, offset)`, answered with the total.

Invariant: `limit` is between 1 and `MAX_PAGE_LIMIT` and `offset` is not negative (the HTTP layer,
`control_plane.web.pagination`, refuses anything else with a 400, never serving a huge page); a page
past the end is empty, with the real total.
"""

from __future__ import annotations

import msgspec

DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 500


class PageRequest(msgspec.Struct, frozen=True, kw_only=True):
    limit: int = DEFAULT_PAGE_LIMIT
    offset: int = 0
