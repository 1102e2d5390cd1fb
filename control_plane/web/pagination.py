"""`?limit=&offset=` on list routes: validated query parameters -> `PageRequest` (a dependency)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

from control_plane.pagination import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_PAGE_OFFSET, PageRequest


def page_request(
    limit: Annotated[
        int, QueryParameter(ge=1, le=MAX_PAGE_LIMIT, description=f"page size, at most {MAX_PAGE_LIMIT}")
    ] = DEFAULT_PAGE_LIMIT,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_PAGE_OFFSET, description="items to skip")] = 0,
) -> PageRequest:
    return PageRequest(limit=limit, offset=offset)
