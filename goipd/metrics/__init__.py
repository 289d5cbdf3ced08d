"""The Prometheus metrics: every metric declared once, and their fast text exposition."""
