"""Status callbacks: each recipient state change an application asked for is POSTed, signed,
to its status_url, at least once (docs/status-callbacks.md)."""
