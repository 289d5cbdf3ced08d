"""Accepting: a request or an Alertmanager page becomes a NewMessage, the one door in."""
