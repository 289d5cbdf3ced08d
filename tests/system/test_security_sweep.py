"""Security sweep over a daemon with every kind of secret configured (API tokens, SMS Server
passwords and hook tokens, cloud provider credentials and hook tokens):

- every /api/* route in the OpenAPI document refuses a missing or wrong bearer token;
- every hook refuses a wrong or missing hook token;
- after a run that sends through GoIP and a cloud provider, fails on purpose and answers
  problems, no secret appears in the logs, /metrics, any /api output or any problem document.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.cloud import PAASOO_HOOK, SMSGO_HOOK, Clouds, providers
from tests.helpers.daemons import API_TOKEN, daemon_config, fleet_spec
from tests.helpers.pipeline import send

SERVER_PASSWORD = "pw-hq"
SERVER_HOOK = "hook-hq-0123456789"
# A CRM's webhook with credentials in every place a URL can hold them; nothing listens there, so
# each forward fails and is logged.
FORWARD_PASSWORD = "crm-S3cretPass"
FORWARD_PATH_TOKEN = "XyZsecretToken123"
FORWARD_QUERY_KEY = "key-abc123456"


def secrets(config: dict[str, Any]) -> list[str]:
    found = [API_TOKEN, SERVER_PASSWORD, SERVER_HOOK, SMSGO_HOOK, PAASOO_HOOK]
    found += [FORWARD_PASSWORD, FORWARD_PATH_TOKEN, FORWARD_QUERY_KEY]
    for provider in config["providers"].values():
        found.extend(provider[k] for k in ("password", "secret") if k in provider)
    return found


@pytest.fixture
async def secured(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    clouds: Clouds,
    tmp_path: Path,
) -> tuple[Daemon, dict[str, Any]]:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    config = daemon_config(
        sim,
        ["hq"],
        tmp_path,
        providers=providers(clouds),
        routes=[
            {"match": {"prefix": ["+65"]}, "via": [{"cloud": "paasoo"}]},
            {"via": [{"server": "hq"}]},
        ],
        inbound={
            "forward_urls": [
                f"http://crm:{FORWARD_PASSWORD}@127.0.0.1:9/services/T1/{FORWARD_PATH_TOKEN}"
                f"?key={FORWARD_QUERY_KEY}"
            ]
        },
    )
    return await daemon_factory(config), config


async def test_every_api_route_needs_the_token(secured: tuple[Daemon, dict[str, Any]]) -> None:
    daemon, _ = secured
    base = f"http://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(
            f"{base}/api/v1/openapi.json", headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as resp:
            document = await resp.json()
        checked = 0
        for path, operations in document["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in operations:
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}):
                    async with anonymous.request(
                        method.upper(), f"{base}{concrete}", headers=headers
                    ) as resp:
                        assert resp.status == 401, (method, path, headers, resp.status)
                        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                        checked += 1
    assert checked >= 2 * 8


async def test_a_push_body_over_64_kib_is_refused_unread(
    secured: tuple[Daemon, dict[str, Any]],
) -> None:
    """With a Content-Length or chunked: 413 either way, counted as malformed; a body of
    exactly 64 KiB is read whole (and refused only as the report it is not)."""
    daemon, _ = secured
    url = f"http://127.0.0.1:{daemon.port}/hooks/goip/hq/status?token={SERVER_HOOK}"
    limit = 64 * 1024

    async def chunked(size: int) -> Any:
        for _ in range(size // 1024):
            yield b"x" * 1024
        yield b"x" * (size % 1024)

    async with aiohttp.ClientSession() as session:
        for body in (b"x" * (limit + 1), chunked(limit + 1)):
            async with session.post(url, data=body) as resp:
                assert resp.status == 413
                assert "push body larger than 65536 bytes" in (await resp.json())["detail"]
        async with session.post(url, data=b"x" * limit) as resp:
            assert resp.status == 400
            assert "malformed send report" in (await resp.json())["detail"]
        async with session.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
            text = await resp.text()
    assert (
        sample(text, "goipd_push_reports_total", source="hq", kind="status", outcome="malformed")
        == 3
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/hooks/goip/hq/status"),
        ("POST", "/hooks/goip/hq/inbound"),
        ("POST", "/hooks/goip/nope/status"),
        ("GET", "/hooks/smsgo/report"),
        ("GET", "/hooks/smsgo/reply"),
        ("GET", "/hooks/paasoo/report"),
    ],
)
async def test_every_hook_needs_its_token(
    secured: tuple[Daemon, dict[str, Any]], method: str, path: str
) -> None:
    daemon, _ = secured
    base = f"http://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession() as anonymous:
        for suffix in ("", "?token=", "?token=wrong-0123456789", f"?token={API_TOKEN}"):
            async with anonymous.request(method, f"{base}{path}{suffix}", data=b"{}") as resp:
                assert resp.status == 401, (path, suffix)
        if method == "GET":
            # The other token form: the last path segment.
            async with anonymous.get(f"{base}{path}/wrong-0123456789") as resp:
                assert resp.status == 401


async def test_no_secret_leaks_anywhere(
    secured: tuple[Daemon, dict[str, Any]],
    clouds: Clouds,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, config = secured
    base = f"http://127.0.0.1:{daemon.port}"
    outputs: list[str] = []
    ok = await send(http, base, {"to": ["+886912345678"], "text": "hello"})
    cloud = await send(http, base, {"to": ["+6591234567"], "text": "hello cloud"})
    # A provider refuses goipd's credentials: the refusal is logged and counted.
    clouds.paasoo.sim.set_fault("auth")
    refused = await send(http, base, {"to": ["+6591234568"], "text": "refused"})

    async def paasoo_disabled() -> bool:
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        return 'goipd_provider_disabled{provider="paasoo"} 1.0' in text

    await eventually(paasoo_disabled, 5, "paasoo disabled after refusing the credentials")
    # An inbound SMS whose forward to the CRM fails: logged with the URL.
    async with http.post(
        f"{base}/hooks/goip/hq/inbound?token={SERVER_HOOK}",
        json={"goip_line": "G101", "from_number": "+886987654321", "content": "hi"},
    ) as resp:
        assert resp.status == 200

    forward_logged = False
    for _ in range(50):
        captured = capsys.readouterr()
        outputs.extend((captured.out, captured.err))
        if "inbound_forward_failed" in captured.out + captured.err:
            forward_logged = True
            break
        await asyncio.sleep(0.1)
    assert forward_logged, "the failed forward was not logged"
    for message_id in (ok["id"], cloud["id"], refused["id"]):
        async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
            outputs.append(await resp.text())
    for path in ("/api/v1/lines", "/api/v1/messages", "/api/v1/inbound", "/api/v1/openapi.json"):
        async with http.get(f"{base}{path}") as resp:
            outputs.append(await resp.text())
    async with http.get(f"{base}/metrics") as resp:
        outputs.append(await resp.text())
    # Problem documents (the callers' own values may come back in a detail, goipd's never).
    for method, path, body in (
        ("POST", "/api/v1/messages", {"to": ["not a number"], "text": "x"}),
        (
            "POST",
            "/api/v1/messages",
            {"to": ["+886912345678"], "text": "x", "route": {"server": "x"}},
        ),
        ("GET", "/api/v1/messages/01M82MSVCANFHDNKVXSWWVQGGT", None),
        ("GET", f"/hooks/smsgo/report/{SMSGO_HOOK}", None),
        ("GET", f"/hooks/paasoo/report?token={PAASOO_HOOK}&type=dlr", None),
        ("POST", f"/hooks/goip/hq/status?token={SERVER_HOOK}", {"taskID": 5}),
    ):
        async with http.request(method, f"{base}{path}", json=body) as resp:
            assert resp.status >= 400, path
            outputs.append(await resp.text())
    logs = capsys.readouterr()
    outputs.extend((logs.out, logs.err))
    for secret in secrets(config):
        for index, output in enumerate(outputs):
            assert secret not in output, f"secret {secret[:3]}... found in output {index}"
