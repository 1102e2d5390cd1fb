"""`edgefabric keys ...` and `edgefabric release ...`: the release signer's command line.

`add_signing_commands(subparsers)` adds both command groups to the `edgefabric` parser. Handlers
return exit codes from `protocols.cli_support`; failures raise `FabricError`s, which `run_cli`
prints as one line (exit 1). Output is a table for humans, or the result as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from model_compiler.errors import RepositoryNotFoundError, TamperedArtifactError
from model_compiler.signing._state import ROOT_FILENAME
from model_compiler.signing.archive import manifest_mismatch
from model_compiler.signing.bundle import make_bundle
from model_compiler.signing.release import METADATA_DIRNAME, SignedRelease, SignedTarget
from model_compiler.signing.repository import (
    RoleExpiries,
    init_repository,
    republish_release,
    resign_timestamp,
    rotate_root_key,
    sign_release,
)
from model_compiler.verification import ReleaseVerifier
from protocols.cli_support import EXIT_OK, EXIT_USAGE, Handler
from protocols.manifest import MANIFEST_FILENAME, manifest_decoder

_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)


class VerifiedDirectory(msgspec.Struct, frozen=True, kw_only=True):
    """`release verify --json`: the directory matches this signed target file for file."""

    artifact_dir: str
    files: int
    target: SignedTarget


def add_signing_commands(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    """Add the `keys` and `release` command groups to a parser's subcommands."""
    keys = _group(subparsers, "keys", "manage the TUF repository's signing keys")
    init = _command(keys, "init", "create a TUF repository with fresh keys for every role", _init)
    init.add_argument("--root-threshold", type=_positive_int, default=1, metavar="N")
    init.add_argument("--root-keys", type=_positive_int, default=1, metavar="N")
    init.add_argument("--targets-threshold", type=_positive_int, default=1, metavar="N")
    init.add_argument("--targets-keys", type=_positive_int, default=1, metavar="N")
    for role in RoleExpiries.__struct_fields__:
        flag = "--" + role.replace("_days", "-expiry-days")
        init.add_argument(flag, dest=role, type=_positive_int, metavar="DAYS", help="default: %(default)s")
        init.set_defaults(**{role: getattr(RoleExpiries(), role)})
    rotate = _command(keys, "rotate-root", "publish a new root that replaces one root key", _rotate_root)
    rotate.add_argument("--keyid", help="the root key to replace (needed when the root has several)")
    rotate.add_argument("--replace-targets-keys", action="store_true", help="also replace the targets keys")
    _command(keys, "resign-timestamp", "re-sign the online timestamp (and snapshot when due)", _resign)

    release = _group(
        subparsers, "release", "sign, verify and bundle releases in a local TUF repository (offline)"
    )
    sign = _command(release, "sign", "sign every <profile>/ artifact of a compile output", _sign)
    sign.add_argument("out_dir", metavar="OUT_DIR")
    _add_release_id(sign)
    republish = _command(
        release, "republish", "publish a signed version again with a new counter", _republish
    )
    _add_release_id(republish)
    verify = _command(release, "verify", "check an artifact directory against its signed release", _verify)
    verify.add_argument("artifact_dir", metavar="ARTIFACT_DIR")
    verify.add_argument("--profile", required=True, help="the hardware profile it was signed for")
    bundle = _command(release, "bundle", "write an offline bundle of one release", _bundle)
    _add_release_id(bundle)
    bundle.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="must not exist yet")


def _group(
    subparsers: argparse._SubParsersAction[_Parser], name: str, help_text: str
) -> argparse._SubParsersAction[_Parser]:
    group = subparsers.add_parser(name, help=help_text, description=help_text)

    def print_help(_: argparse.Namespace) -> int:
        group.print_help()
        return EXIT_USAGE

    group.set_defaults(handler=print_help)
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def _command(
    commands: argparse._SubParsersAction[_Parser], name: str, help_text: str, handler: Handler
) -> _Parser:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument("--repo", required=True, metavar="DIR", help="the TUF repository directory")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    command.set_defaults(handler=handler)
    return command


def _add_release_id(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", required=True, metavar="NAME")
    command.add_argument("--version", required=True, metavar="V")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _init(args: argparse.Namespace) -> int:
    expiries = RoleExpiries(**{role: getattr(args, role) for role in RoleExpiries.__struct_fields__})
    created = init_repository(
        Path(args.repo),
        root_threshold=args.root_threshold,
        root_key_count=args.root_keys,
        targets_threshold=args.targets_threshold,
        targets_key_count=args.targets_keys,
        expiries=expiries,
    )
    if args.json:
        return _print_json(created)
    for warning in created.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"created TUF repository at {args.repo}")
    _print_table(("ROLE", "KEYID"), [(role, keyid) for role, ids in created.keyids.items() for keyid in ids])
    return EXIT_OK


def _rotate_root(args: argparse.Namespace) -> int:
    rotation = rotate_root_key(
        Path(args.repo), keyid=args.keyid, replace_targets_keys=args.replace_targets_keys
    )
    if args.json:
        return _print_json(rotation)
    print(
        f"root v{rotation.root_version}: root key {rotation.retired_keyid} replaced by {rotation.added_keyid}"
    )
    for keyid in rotation.targets_keyids:
        print(f"new targets key {keyid}")
    return EXIT_OK


def _resign(args: argparse.Namespace) -> int:
    refresh = resign_timestamp(Path(args.repo))
    if args.json:
        return _print_json(refresh)
    print(f"timestamp v{refresh.timestamp_version} expires {refresh.timestamp_expires.isoformat()}")
    print(f"snapshot v{refresh.snapshot_version} expires {refresh.snapshot_expires.isoformat()}")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    return _print_release(
        sign_release(Path(args.repo), Path(args.out_dir), args.model, args.version), args.json
    )


def _republish(args: argparse.Namespace) -> int:
    return _print_release(republish_release(Path(args.repo), args.model, args.version), args.json)


def _print_release(release: SignedRelease, as_json: bool) -> int:
    if as_json:
        return _print_json(release)
    counter, targets_version = release.model_counter, release.targets_version
    print(f"{release.model} {release.version}: model_counter {counter}, targets v{targets_version}")
    rows = [(t.hw_profile, t.path, t.sha256[:16], str(t.length)) for t in release.targets]
    _print_table(("PROFILE", "TARGET", "SHA256", "BYTES"), rows)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    """Verify the signed target of ARTIFACT_DIR's release with the verification library, then compare."""
    repo_dir, artifact_dir = Path(args.repo), Path(args.artifact_dir)
    try:
        trusted_root = (repo_dir / METADATA_DIRNAME / ROOT_FILENAME).read_bytes()
    except FileNotFoundError as e:
        raise RepositoryNotFoundError(repo_dir) from e
    try:
        local_manifest = (artifact_dir / MANIFEST_FILENAME).read_bytes()
    except FileNotFoundError as e:
        raise TamperedArtifactError(str(artifact_dir), f"no {MANIFEST_FILENAME}") from e
    manifest = manifest_decoder.decode(local_manifest)
    with tempfile.TemporaryDirectory(prefix="edgefabric-verify-") as scratch:
        verifier = ReleaseVerifier.for_local_directory(trusted_root, Path(scratch) / "metadata", repo_dir)
        verified = verifier.verify_and_download(
            manifest.model, manifest.version, args.profile, min_counter=0, dest_dir=Path(scratch) / "artifact"
        )
        if local_manifest != (verified.directory / MANIFEST_FILENAME).read_bytes():
            raise TamperedArtifactError(
                str(artifact_dir / MANIFEST_FILENAME), "differs from the signed manifest"
            )
    mismatch = manifest_mismatch(verified.manifest, artifact_dir)
    if mismatch is not None:
        raise TamperedArtifactError(str(artifact_dir), mismatch)
    result = VerifiedDirectory(
        artifact_dir=str(artifact_dir), files=len(manifest.files), target=verified.target
    )
    if args.json:
        return _print_json(result)
    target = verified.target
    print(f"OK {artifact_dir}: {result.files} files match signed target {target.path}")
    _print_table(
        ("PROFILE", "COUNTER", "SHA256"), [(target.hw_profile, str(target.model_counter), target.sha256)]
    )
    return EXIT_OK


def _bundle(args: argparse.Namespace) -> int:
    index = make_bundle(Path(args.repo), args.model, args.version, Path(args.out))
    if args.json:
        return _print_json(index)
    print(f"wrote bundle {args.out}: {index.model} {index.version} for {', '.join(index.profiles)}")
    return EXIT_OK


def _print_json(result: msgspec.Struct) -> int:
    print(msgspec.json.encode(result).decode())
    return EXIT_OK


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
