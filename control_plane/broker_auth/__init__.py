"""Broker credentials: the embedded nats-server's operator, accounts, and per-device NATS/MQTT JWTs."""
