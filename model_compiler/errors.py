"""Errors of the model compiler (compile, validate) and of release signing and verification."""

from __future__ import annotations

from pathlib import Path

from protocols.errors import FabricError


class CompilerError(FabricError):
    """Root of model-compiler errors."""


# --- compiling -------------------------------------------------------------------------------------


class InvalidModelError(CompilerError):
    """The input ONNX fails the checker, shape inference or the opset check."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a usable ONNX model: {reason}")
        self.path = path
        self.reason = reason


class DatasetError(CompilerError):
    """A calibration/validation `.npz` does not fit the model."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedOperatorError(CompilerError):
    """The profile's runtime cannot run an operator of the model (e.g. ONNX-ML ops off ORT)."""

    def __init__(self, profile: str, operator: str) -> None:
        super().__init__(f"{profile}: unsupported operator {operator}")
        self.profile = profile
        self.operator = operator


class MissingToolchainError(CompilerError):
    """A pass needs a package that is not installed; names the extra that brings it."""

    def __init__(self, what: str, extra: str, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f'{what} is not installed: pip install "edgefabric[{extra}]"{suffix}')
        self.what = what
        self.extra = extra


class PassFailedError(CompilerError):
    """A compile pass raised; carries the pass name and the underlying reason."""

    def __init__(self, pass_name: str, reason: str) -> None:
        super().__init__(f"pass {pass_name} failed: {reason}")
        self.pass_name = pass_name
        self.reason = reason


class DestinationExistsError(CompilerError):
    """An output directory (verified artifact, bundle) already exists; it is never overwritten."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; refusing to overwrite it")
        self.path = path


# --- signing releases (model_compiler.signing) ---------------------------------------------------


class SigningError(CompilerError):
    """The release signer refused or could not complete an operation on its TUF repository."""


class RepositoryExistsError(SigningError):
    def __init__(self, repo_dir: Path) -> None:
        super().__init__(f"a TUF repository already exists at {repo_dir}; refusing to replace its keys")
        self.repo_dir = repo_dir


class RepositoryNotFoundError(SigningError):
    def __init__(self, repo_dir: Path) -> None:
        super().__init__(f"no TUF repository at {repo_dir} (create one with 'edgefabric keys init')")
        self.repo_dir = repo_dir


class InvalidKeyPolicyError(SigningError):
    """A role's threshold is below 1 or above its number of keys."""

    def __init__(self, role: str, threshold: int, key_count: int) -> None:
        super().__init__(f"{role}: threshold {threshold} needs 1 <= threshold <= keys ({key_count})")
        self.role = role
        self.threshold = threshold
        self.key_count = key_count


class SigningKeyMissingError(SigningError):
    """Fewer private keys of a role are at hand than its threshold; nothing was signed."""

    def __init__(self, role: str, available: int, threshold: int) -> None:
        super().__init__(f"{role}: {available} private key(s) in the keys directory, threshold {threshold}")
        self.role = role
        self.available = available
        self.threshold = threshold


class RootKeyChoiceError(SigningError):
    """A root key rotation names no key (and the root has several) or a key that is not a root key."""

    def __init__(self, keyid: str | None, root_keyids: tuple[str, ...]) -> None:
        choices = ", ".join(root_keyids)
        if keyid is None:
            super().__init__(f"the root has {len(root_keyids)} keys; say which one to replace: {choices}")
        else:
            super().__init__(f"{keyid} is not a root key; root keys: {choices}")
        self.keyid = keyid
        self.root_keyids = root_keyids


class ArtifactDirectoryError(SigningError):
    """A compile output directory cannot be signed as given (missing manifest, files not matching)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot sign {path}: {reason}")
        self.path = path
        self.reason = reason


class ReleaseExistsError(SigningError):
    def __init__(self, model: str, version: str, model_counter: int) -> None:
        super().__init__(
            f"{model} {version} is already signed (model_counter {model_counter}); "
            "sign a new version, or republish this one to roll devices back to it"
        )
        self.model = model
        self.version = version
        self.model_counter = model_counter


class ReleaseNotFoundError(SigningError):
    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"no signed release {model} {version} in the repository")
        self.model = model
        self.version = version


# --- verifying releases (model_compiler.verification) --------------------------------------------


class VerificationError(CompilerError):
    """A release failed verification; nothing was written to the destination."""


class UntrustedSignatureError(VerificationError):
    """Metadata is not signed by a threshold of the keys the trusted root delegates to."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"untrusted signature: {reason}")
        self.reason = reason


class RollbackError(VerificationError):
    """Metadata is older than what this device already trusts (replay or rollback attack)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"metadata rollback refused: {reason}")
        self.reason = reason


class ExpiredMetadataError(VerificationError):
    """Metadata is past its expiry (freeze attack, or the repository stopped re-signing)."""

    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(f"expired metadata (possible freeze attack): {reason}")
        self.reason = reason


class InvalidMetadataError(VerificationError):
    """Metadata is malformed or inconsistent (wrong type, mix-and-match, bad custom fields)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid metadata: {reason}")
        self.reason = reason


class DownloadFailedError(VerificationError):
    """Metadata or an artifact could not be fetched (missing file, transport failure)."""

    retryable = True

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot fetch {what}: {reason}")
        self.what = what
        self.reason = reason


class LengthMismatchError(VerificationError):
    """Served bytes are longer than the signed (or maximum) length."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: length mismatch: {reason}")
        self.what = what
        self.reason = reason


class TamperedArtifactError(VerificationError):
    """Artifact bytes differ from the signed hash, or a file from its signed manifest."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: tampered: {reason}")
        self.what = what
        self.reason = reason


class TargetNotFoundError(VerificationError):
    def __init__(self, target: str) -> None:
        super().__init__(f"{target} is not a signed target")
        self.target = target


class ReleaseMismatchError(VerificationError):
    """A signed field (custom or manifest) names another release than the one asked for."""

    def __init__(self, target: str, field: str, expected: str, actual: str) -> None:
        super().__init__(f"{target}: signed {field} is {actual!r}, expected {expected!r}")
        self.target = target
        self.field = field
        self.expected = expected
        self.actual = actual


class ProfileMismatchError(ReleaseMismatchError):
    """The artifact is signed for another hardware profile than this device's."""

    def __init__(self, target: str, expected: str, actual: str) -> None:
        super().__init__(target, "hw_profile", expected, actual)


class CounterRollbackError(VerificationError):
    """The release's model_counter is not above the device's installed counter (downgrade)."""

    def __init__(self, target: str, model_counter: int, min_counter: int) -> None:
        super().__init__(
            f"{target}: model_counter {model_counter} is not above the installed counter {min_counter}"
        )
        self.target = target
        self.model_counter = model_counter
        self.min_counter = min_counter


class UnsafeArchiveError(VerificationError):
    """The artifact tar holds something other than plain files at safe relative paths."""

    def __init__(self, target: str, member: str, reason: str) -> None:
        super().__init__(f"{target}: unsafe archive member {member!r}: {reason}")
        self.target = target
        self.member = member
        self.reason = reason
