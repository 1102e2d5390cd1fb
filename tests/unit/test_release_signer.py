"""The control plane's TUF repository adapter: created once, timestamp refresh rule, file lookups."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.errors import ConflictError, DataDirError
from control_plane.releases.signer import ReleaseSigner, RoleValidity

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


def signed(repo: Path, file: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((repo / "metadata" / file).read_bytes())["signed"]
    return document


@pytest.mark.parametrize(
    ("elapsed", "is_due"),
    [
        (timedelta(0), False),
        (timedelta(hours=12), False),
        (timedelta(hours=12, seconds=1), True),
        (timedelta(days=2), True),
    ],
)
def test_a_role_is_due_for_refresh_once_less_than_half_its_lifetime_is_left(
    elapsed: timedelta, is_due: bool
) -> None:
    validity = RoleValidity(expires=NOW + timedelta(days=1), lifetime=timedelta(days=1))
    assert validity.is_refresh_due(NOW + elapsed) is is_due


def test_refresh_resigns_the_timestamp_past_half_its_day_and_nothing_before(tmp_path: Path) -> None:
    repo = tmp_path / "tuf"
    signer = ReleaseSigner.open_or_create(repo, NOW)
    assert signed(repo, "timestamp.json")["expires"] == "2030-01-02T00:00:00Z"
    assert signer.refresh(NOW + timedelta(hours=12)) == ()
    assert signed(repo, "timestamp.json")["version"] == 1

    assert signer.refresh(NOW + timedelta(hours=13)) == ("timestamp",)
    timestamp = signed(repo, "timestamp.json")
    assert (timestamp["version"], timestamp["expires"]) == (2, "2030-01-02T13:00:00Z")
    assert timestamp["meta"]["snapshot.json"]["version"] == 1  # the snapshot is valid for days yet


def test_refresh_resigns_the_targets_before_they_expire_without_a_release(tmp_path: Path) -> None:
    repo = tmp_path / "tuf"
    signer = ReleaseSigner.open_or_create(repo, NOW)
    now = NOW
    for _ in range(120):  # a day at a time, as a control plane that is never restarted would
        now += timedelta(days=1)
        signer.refresh(now)
        timestamp = signed(repo, "timestamp.json")
        snapshot = signed(repo, f"{timestamp['meta']['snapshot.json']['version']}.snapshot.json")
        targets = signed(repo, f"{snapshot['meta']['targets.json']['version']}.targets.json")
        for document in (timestamp, snapshot, targets):
            assert document["expires"] > now.strftime("%Y-%m-%dT%H:%M:%SZ"), (now, document)
    assert targets["version"] == 3  # re-signed on day 46 and day 91


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
