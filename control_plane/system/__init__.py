"""The control plane's own state: health."""
