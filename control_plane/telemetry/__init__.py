"""Telemetry: the ingest of device records from JetStream into SQLite, and the time series over them."""
