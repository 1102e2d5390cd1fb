"""HTTP plumbing shared by every area: error mapping, body and rate limits, request metrics."""
