"""Loading hardware profiles from TOML, and the registry of packaged profiles with their fallbacks.

Invariants:
- A profile loads only if it is valid TOML, matches the `HardwareProfile` schema, is consistent, and
  its `name` equals its file stem. Anything else raises `ProfileFileError` naming the file and the
  offending field.
- `all_profiles()` is read once per process; in the set it returns every `fallback` names a profile
  of the set that runs on at least one of the same architectures, and no fallback chain loops.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType

import msgspec

from hardware_profiles.errors import (
    FallbackError,
    InconsistentProfileError,
    ProfileFileError,
    UnknownProfileError,
)
from hardware_profiles.profile import HardwareProfile

_SUFFIX = ".toml"
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")
_TOML_LINE = re.compile(r"\(at line (?P<line>\d+), column \d+\)")
_TOML_TABLE = re.compile(r"^\s*\[\[?\s*(?P<table>[^\]]+?)\s*\]")
_TOML_KEY = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.-]+)\s*=")


def load_profile_file(path: str | os.PathLike[str]) -> HardwareProfile:
    """Load and validate one profile file; raise `ProfileFileError` naming the file and field."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ProfileFileError(str(file), None, f"cannot read: {e.strerror or e}") from e
    return _decode_profile(data, source=str(file), stem=file.stem)


@functools.cache
def all_profiles() -> Mapping[str, HardwareProfile]:
    """Every packaged profile by name, read once; fallbacks are checked (see module invariants)."""
    directory = files("hardware_profiles") / "profiles"
    profiles: dict[str, HardwareProfile] = {}
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(_SUFFIX):
            profile = _decode_profile(entry.read_bytes(), source=str(entry), stem=entry.name[: -len(_SUFFIX)])
            profiles[profile.name] = profile
    check_fallbacks(profiles)
    return MappingProxyType(profiles)


def load_profile(name: str) -> HardwareProfile:
    """The packaged profile called `name`; raise `UnknownProfileError` if there is none."""
    profiles = all_profiles()
    if name not in profiles:
        raise UnknownProfileError(name, profiles)
    return profiles[name]


def fallback_chain(name: str, profiles: Mapping[str, HardwareProfile] | None = None) -> list[HardwareProfile]:
    """`name`'s profile followed by its fallbacks, in the order an agent should try them.

    Uses the packaged profiles unless `profiles` is given. Raises `UnknownProfileError` for an unknown
    `name` and `FallbackError` for a fallback that is unknown, runs on other architectures, or loops.
    """
    profiles = all_profiles() if profiles is None else profiles
    if name not in profiles:
        raise UnknownProfileError(name, profiles)
    chain = [profiles[name]]
    while (target := chain[-1].fallback) is not None:
        current = chain[-1]
        if target not in profiles:
            raise FallbackError(current.name, f"falls back to unknown profile {target!r}")
        successor = profiles[target]
        if not set(current.detect.architectures) & set(successor.detect.architectures):
            raise FallbackError(
                current.name, f"falls back to {target!r}, which runs on none of its architectures"
            )
        if target in {p.name for p in chain}:
            loop = " -> ".join([p.name for p in chain] + [target])
            raise FallbackError(name, f"fallback chain loops: {loop}")
        chain.append(successor)
    return chain


def check_fallbacks(profiles: Mapping[str, HardwareProfile]) -> None:
    """Raise `FallbackError` unless every fallback chain in `profiles` ends without looping."""
    for name in profiles:
        fallback_chain(name, profiles)


def _decode_profile(data: bytes, *, source: str, stem: str) -> HardwareProfile:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileFileError(source, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileFileError(source, _toml_error_field(text, str(e)), f"invalid TOML: {e}") from e
    try:
        profile = msgspec.convert(document, HardwareProfile)
    except msgspec.ValidationError as e:
        if isinstance(e.__cause__, InconsistentProfileError):
            raise ProfileFileError(source, e.__cause__.field, e.__cause__.reason) from e
        field, reason = _validation_field(str(e))
        raise ProfileFileError(source, field, reason) from e
    if profile.name != stem:
        raise ProfileFileError(source, "name", f"{profile.name!r} must equal the file name stem {stem!r}")
    return profile


def _validation_field(message: str) -> tuple[str | None, str]:
    """Split msgspec's "Expected `int`, got `str` - at `$.latency.p95_latency_ms`" into field and reason."""
    reason, _, at = message.partition(" - at `$")
    path = at.removesuffix("`").lstrip(".")
    named = _NAMED_FIELD.search(reason)
    if named is not None:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or None, reason


def _toml_error_field(text: str, message: str) -> str | None:
    """The dotted key on the line a TOML error points at ("line N" if that line has no key)."""
    at = _TOML_LINE.search(message)
    if at is None:
        return None
    number = int(at["line"])
    lines = text.splitlines()[:number]
    key = _TOML_KEY.match(lines[-1]) if lines else None
    if key is None:
        return f"line {number}"
    table = next((m["table"] for line in reversed(lines[:-1]) if (m := _TOML_TABLE.match(line))), None)
    return f"{table}.{key['key']}" if table else key["key"]
