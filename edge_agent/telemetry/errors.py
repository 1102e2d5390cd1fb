"""Errors of the agent's telemetry pipeline."""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import AgentError


class TelemetryStorageError(AgentError):
    """The on-device telemetry queue could not be read or written (disk full, I/O error, corruption)."""

    retryable = True

    def __init__(self, path: Path, operation: str, reason: str) -> None:
        super().__init__(f"telemetry queue {path}: {operation} failed: {reason}")
        self.path = path
        self.operation = operation
        self.reason = reason
