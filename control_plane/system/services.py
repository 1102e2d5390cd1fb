"""Health: the process answers and its database is readable at the expected schema version."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database

from control_plane.db import schema_version
from control_plane.errors import UnavailableError
from control_plane.system.schemas import Health


class HealthService:
    def __init__(self, db: Database, *, version: str) -> None:
        self._db = db
        self._version = version

    def check(self) -> Health:
        try:
            version = schema_version(self._db)
        except sqlite3.Error as e:
            raise UnavailableError("database", str(e)) from e
        return Health(status="ok", version=self._version, schema_version=version)
