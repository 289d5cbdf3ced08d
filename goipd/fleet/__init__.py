"""Fleet state: the poller asks every SMS Server for its lines, the registry remembers them,
the collector exports them, leases decide which instance polls which server."""
