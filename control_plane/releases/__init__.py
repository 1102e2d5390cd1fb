"""Releases: signing compiled model versions into the control plane's TUF repository and serving it."""
