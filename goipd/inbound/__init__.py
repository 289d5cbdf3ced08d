"""Inbound SMS: stored, then forwarded at least once to the configured webhooks."""
