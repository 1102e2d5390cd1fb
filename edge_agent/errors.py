"""Errors of the edge agent. Each one is what a report or a CLI line shows: typed, with fields."""

from __future__ import annotations

from pathlib import Path

from protocols.errors import FabricError


class AgentError(FabricError):
    """Root of edge-agent errors."""


class ConfigError(AgentError):
    """A configuration value is missing or wrong; names the key and where it came from."""

    def __init__(self, key: str, reason: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"config {key}{where}: {reason}")
        self.key = key
        self.reason = reason
        self.source = source


class InsufficientDiskError(AgentError):
    """Not enough free space to download and unpack an artifact."""

    retryable = True

    def __init__(self, path: Path, needed_bytes: int, free_bytes: int) -> None:
        super().__init__(f"{path}: need {needed_bytes} bytes free for the download, have {free_bytes}")
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class AcceptanceFailedError(AgentError):
    """The artifact ran on this device but did not reproduce its golden outputs in budget."""

    def __init__(self, model: str, version: str, profile: str, reason: str) -> None:
        super().__init__(f"{model} {version} ({profile}) failed the acceptance test: {reason}")
        self.model = model
        self.version = version
        self.profile = profile
        self.reason = reason


class NoArtifactForDeviceError(AgentError):
    """No profile in this device's fallback chain has a usable artifact in the release."""

    def __init__(self, model: str, version: str, tried: list[str]) -> None:
        super().__init__(f"{model} {version}: no acceptable artifact for profiles {tried}")
        self.model = model
        self.version = version
        self.tried = tried


class ModelNotServedError(AgentError):
    """Inference asked for a model this agent does not serve."""

    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(f"model {model!r} is not served here (served: {', '.join(served) or 'none'})")
        self.model = model


class InvalidInferenceInputError(AgentError):
    """An inference request does not match the model's inputs."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"{model}: invalid input: {reason}")
        self.model = model
        self.reason = reason


class NothingToRollBackError(AgentError):
    """Rollback was asked for a model with no previous version on this device."""

    def __init__(self, model: str) -> None:
        super().__init__(f"{model}: no previous version to roll back to")
        self.model = model


class UnsupportedCommandError(AgentError):
    """A command this agent cannot carry out (e.g. training without the federated extra)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"command {kind}: {reason}")
        self.kind = kind
