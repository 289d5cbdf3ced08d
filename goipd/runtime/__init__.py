"""Process plumbing: logs, systemd notify/watchdog, supervised tasks, small async helpers."""
