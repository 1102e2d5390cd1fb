"""Ed25519 signing keys of a TUF repository: one private key file per key under `<repo>/keys/`.

Invariants:
- A private key lives in `keys/<keyid>.pem` (PKCS#8 PEM), written atomically with mode 0600 in a
  0700 directory. The root metadata, not the file name, says which role a key serves.
- `role_signers` yields only keys the given root lists for the role, and raises
  `SigningKeyMissingError` before anything is signed when fewer than the role's threshold are at
  hand. A key the current root no longer lists is never used again, even if its file remains.

This dev-friendly layout keeps root keys beside the online keys; in production move the root keys
offline and bring them back only to rotate keys.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.metadata import Root

from model_compiler.errors import SigningKeyMissingError
from protocols.durable import write_atomic

KEYS_DIRNAME = "keys"


def generate_key(keys_dir: Path) -> CryptoSigner:
    """Create an Ed25519 key and store its private half in `keys_dir`."""
    signer = CryptoSigner.generate_ed25519()
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(keys_dir / f"{signer.public_key.keyid}.pem", signer.private_bytes, mode=0o600)
    return signer


def role_signers(keys_dir: Path, root: Root, role: str) -> list[Signer]:
    """Signers for every key of `role` in `root` whose private key is in `keys_dir`."""
    delegation = root.roles[role]
    signers: list[Signer] = []
    for keyid in delegation.keyids:
        path = keys_dir / f"{keyid}.pem"
        public_key = root.get_key(keyid)
        if path.is_file() and isinstance(public_key, SSlibKey):
            signers.append(CryptoSigner(load_pem_private_key(path.read_bytes(), password=None), public_key))
    if len(signers) < delegation.threshold:
        raise SigningKeyMissingError(role, len(signers), delegation.threshold)
    return signers
