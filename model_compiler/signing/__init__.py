"""Release signing (TUF repository, deterministic artifact archives, offline bundles).

This package's `__init__` imports nothing: the device-side verifier (`model_compiler.verification`)
imports `release` and `archive` from here and must not pull the signer's key handling
(`cryptography`) or the compiler's toolchain with them.
"""
