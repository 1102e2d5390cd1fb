"""Rollouts: a release rolled out to the fleet in gated waves, with pause, rollback and promotion."""
