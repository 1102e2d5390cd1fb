"""Operator API tokens: issuing, hashing at rest, expiry, revocation, and who may call what."""
