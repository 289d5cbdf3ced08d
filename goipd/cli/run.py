"""`goipd run` and `goipd check-config`: the daemon, and the check its unit runs before it."""

from __future__ import annotations

import asyncio
import sys

from goipd.cli import push_urls
from goipd.config import ConfigError, load_settings
from goipd.runtime.logs import configure_logging


def check_config(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in push_urls.lengths(settings):
        print(line)
    print(f"{path}: OK ({len(settings.servers)} servers)")
    return 0


def run(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    configure_logging(settings.logging.level, settings.logging.format)
    from goipd.app import run_daemon

    return asyncio.run(run_daemon(settings))
