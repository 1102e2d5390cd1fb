"""The agent's telemetry: per-interval aggregates, an on-device store-and-forward queue, the forwarder.

Flow: inference workers call `TelemetryRecorder.record`; `TelemetryForwarder.collect` drains closed
intervals into the `TelemetryQueue` (SQLite, bounded, prioritised); `TelemetryForwarder.flush` sends
queued records as `TelemetryBatch` messages into the JetStream telemetry stream and deletes them only
once the broker has persisted them.
"""
