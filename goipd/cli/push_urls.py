"""`goipd push-urls`: the two push URLs to paste into each SMS Server, exactly.

They hold the servers' hook tokens, so only this command prints them whole; `check-config`
(which the systemd unit runs, into the journal) shows their length only.
"""

from __future__ import annotations

import argparse
import sys

from goipd.config import GOIP_PUSH_URL_MAX, ConfigError, Settings, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the config file")
    parser.add_argument(
        "--base", help="the URL the SMS Servers reach goipd at (default: http.public_url)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    base = args.base or settings.http.public_url
    if not base:
        print(
            "goipd push-urls: set http.public_url in the config, or give --base URL",
            file=sys.stderr,
        )
        return 2
    for server in settings.servers:
        urls = server.push_urls(base)
        if urls is None:
            print(f"{server.name}: no hook_token, so goipd refuses its pushes; set one")
            continue
        status_url, inbound_url = urls
        print(f"{server.name}:")
        print(f"  send results (status push URL): {status_url}")
        print(f"  inbound SMS (inbound push URL): {inbound_url}")
        longest = max(len(status_url), len(inbound_url))
        if longest > GOIP_PUSH_URL_MAX:
            print(
                f"  too long: {longest} characters, the SMS Server keeps {GOIP_PUSH_URL_MAX}",
                file=sys.stderr,
            )
    return 0


def lengths(settings: Settings) -> list[str]:
    """One line per server on its push URLs' length, without the URLs (they hold tokens)."""
    base = settings.http.public_url
    if not base:
        return []
    report = []
    for server in settings.servers:
        urls = server.push_urls(base)
        if urls is not None:
            report.append(
                f"servers {server.name}: push URLs {len(urls[0])} and {len(urls[1])} characters "
                f"(the SMS Server keeps {GOIP_PUSH_URL_MAX}); `goipd push-urls` prints them"
            )
    return report
