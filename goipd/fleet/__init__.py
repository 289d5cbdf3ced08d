"""Fleet state: the poller asks every SMS Server for its lines, the registry remembers them."""
