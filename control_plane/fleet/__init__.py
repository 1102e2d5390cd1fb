"""The fleet: enrollment tokens, enrollment, device credentials, devices, twins and liveness."""
