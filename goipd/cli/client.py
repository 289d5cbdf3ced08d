"""How the operator verbs reach a running goipd: its HTTP API, with the token from a file or
the environment."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("GOIPD_URL", "http://127.0.0.1:8080"),
        help="goipd base URL (env GOIPD_URL)",
    )
    parser.add_argument("--token-file", help="file holding the API token (else env GOIPD_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


def api_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    return os.environ.get("GOIPD_TOKEN") or None


def call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"--url must be an http:// or https:// URL, got {args.url!r}")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - checked above
    request.add_header("Content-Type", "application/json")
    token = api_token(args)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"detail": exc.reason}
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach goipd at {args.url}: {exc.reason}") from None
