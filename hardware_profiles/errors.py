"""Errors of the hardware-profile package: loading, validating and looking up profiles.

Invariant: every error here derives from `ProfileError` (itself a `FabricError`), carries its facts as
attributes and builds its own message. None is retryable: a broken or unknown profile stays broken
until someone edits a file or passes another name.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocols.errors import FabricError


class ProfileError(FabricError):
    """Root of the hardware-profile errors."""


class ProfileFileError(ProfileError):
    """A profile file cannot be read, is not TOML, or does not match the profile schema.

    `field` is the dotted path of the offending key (`validation.max_relative_error`,
    `compile.passes[1]`), or None when the problem is the file as a whole.
    """

    def __init__(self, source: str, field: str | None, reason: str) -> None:
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.field = field
        self.reason = reason


class InconsistentProfileError(ProfileError, ValueError):
    """Fields of one profile contradict each other (e.g. a TFLite artifact for OpenVINO).

    Also a `ValueError` so that msgspec reports it as a validation error while decoding; the loader
    turns it into a `ProfileFileError` naming the file and `field`.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownProfileError(ProfileError):
    """No profile has this name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"unknown hardware profile {name!r} (known: {', '.join(self.known)})")


class FallbackError(ProfileError):
    """A profile's fallback chain is broken: unknown target, other architecture, or a cycle."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"profile {name!r}: {reason}")
        self.name = name
        self.reason = reason
