"""The append-only audit log of every state-changing call: who, what, on which object, when."""
