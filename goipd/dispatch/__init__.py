"""Sending: due recipients are claimed, routed to a GoIP line or a provider, handed over."""
