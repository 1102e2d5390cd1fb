"""The control plane's TUF repository adapter: created once, timestamp refresh rule, file lookups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.errors import ConflictError, DataDirError
from control_plane.releases.signer import ReleaseSigner, TimestampValidity

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_repository_is_created_once_and_reopened_with_the_same_keys(tmp_path: Path) -> None:
    repo = tmp_path / "data" / "tuf"
    ReleaseSigner.open_or_create(repo, NOW)
    keys = sorted(path.name for path in (repo / "keys").iterdir())
    root = (repo / "metadata" / "1.root.json").read_bytes()

    ReleaseSigner.open_or_create(repo, NOW + timedelta(days=3))

    assert sorted(path.name for path in (repo / "keys").iterdir()) == keys and len(keys) == 4
    assert (repo / "metadata" / "1.root.json").read_bytes() == root
    assert [path.name for path in repo.parent.iterdir()] == ["tuf"]  # no staging dir left behind


def test_a_directory_that_is_not_a_whole_repository_is_refused_not_overwritten(tmp_path: Path) -> None:
    repo = tmp_path / "tuf"
    (repo / "keys").mkdir(parents=True)
    (repo / "keys" / "precious.pem").write_text("key")
    with pytest.raises(DataDirError, match="not a usable TUF repository"):
        ReleaseSigner.open_or_create(repo, NOW)
    assert (repo / "keys" / "precious.pem").read_text() == "key"


def test_fresh_repository_timestamp_is_valid_for_the_default_day(tmp_path: Path) -> None:
    signer = ReleaseSigner.open_or_create(tmp_path / "tuf", NOW)
    assert signer.timestamp_validity() == TimestampValidity(
        expires=NOW + timedelta(days=1), lifetime=timedelta(days=1)
    )


@pytest.mark.parametrize(
    ("elapsed", "is_due"),
    [
        (timedelta(0), False),
        (timedelta(hours=12), False),
        (timedelta(hours=12, seconds=1), True),
        (timedelta(days=2), True),
    ],
)
def test_timestamp_refresh_is_due_once_less_than_half_its_lifetime_is_left(
    elapsed: timedelta, is_due: bool
) -> None:
    validity = TimestampValidity(expires=NOW + timedelta(days=1), lifetime=timedelta(days=1))
    assert validity.is_refresh_due(NOW + elapsed) is is_due


def test_resigning_extends_the_timestamp_from_the_given_time(tmp_path: Path) -> None:
    signer = ReleaseSigner.open_or_create(tmp_path / "tuf", NOW)
    later = NOW + timedelta(hours=13)
    assert signer.resign_timestamp(later).expires == later + timedelta(days=1)


@pytest.mark.parametrize("name", ["1.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"])
def test_metadata_files_clients_fetch_are_found(tmp_path: Path, name: str) -> None:
    signer = ReleaseSigner.open_or_create(tmp_path / "tuf", NOW)
    assert signer.metadata_path(name) == tmp_path / "tuf" / "metadata" / name


@pytest.mark.parametrize(
    "name",
    [
        "root.json",
        "2.root.json",
        "0.root.json",
        "01.root.json",
        "1.root.json.bak",
        "../expiries.json",
        "..",
        "keys",
        "1.delegated.json",
        "timestamp.json/",
    ],
)
def test_other_names_are_not_served(tmp_path: Path, name: str) -> None:
    signer = ReleaseSigner.open_or_create(tmp_path / "tuf", NOW)
    assert signer.metadata_path(name) is None


def test_a_compile_output_without_artifacts_cannot_be_signed(tmp_path: Path) -> None:
    signer = ReleaseSigner.open_or_create(tmp_path / "tuf", NOW)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConflictError, match="cannot be signed"):
        signer.sign(tmp_path / "empty", "digits", "1", NOW)
    with pytest.raises(ConflictError, match="cannot be signed"):
        signer.sign(tmp_path / "missing", "digits", "1", NOW)
