"""Manual line quarantine through the daemon: respected by routing, shown in the API and the
metrics, kept across restarts, shared by goipd instances on one PostgreSQL, and driven by
`goipd quarantine` / `goipd release`. (The ledger, registry and routing parts are tested in
ledger/, fleet/ and dispatch/.)"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.app import Daemon
from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, daemon_config, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.pipeline import connect_push, send, sent_log, wait_states

BACKENDS = ["sqlite", "postgresql"]

Start = Callable[[dict[str, Any]], Awaitable[Daemon]]


async def api(
    http: aiohttp.ClientSession, daemon: Daemon, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{daemon.port}{path}"
    async with http.request(method, url, json=body) as resp:
        if resp.content_type == "application/problem+json":
            return resp.status, {"problem": True, **await resp.json(content_type=None)}
        return resp.status, await resp.json(content_type=None)


async def line_of(http: aiohttp.ClientSession, daemon: Daemon, server: str, line: str) -> Any:
    _, reply = await api(http, daemon, "GET", f"/api/v1/lines?server={server}")
    return next(item for item in reply["lines"] if item["line"] == line)


async def metrics_text(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
        return await resp.text()


@pytest.fixture
async def hq(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
) -> RunningSimulator:
    return await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))


def config_for(sim: RunningSimulator, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return daemon_config(
        sim,
        ["hq"],
        tmp_path,
        routing={"retry_delay": "100ms", "line_rate_per_minute": 600},
        api={"duplicate_window": "0s"},
        **overrides,
    )


async def test_quarantined_line_gets_no_traffic_until_released(
    hq: RunningSimulator, daemon_factory: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon = await daemon_factory(config_for(hq, tmp_path))
    await connect_push(http, hq, daemon, ["hq"])
    code, reply = await api(
        http, daemon, "PUT", "/api/v1/lines/hq/G101/quarantine", {"reason": "SIM swap"}
    )
    assert code == 200, reply
    assert reply["reported"] is True and reply["quarantined"] is True
    assert reply["manual_quarantine"]["reason"] == "SIM swap"
    g101 = await line_of(http, daemon, "hq", "G101")
    assert g101["healthy"] is False and g101["quarantined"] is True
    assert g101["manual_quarantine"]["reason"] == "SIM swap"
    assert g101["quarantined_until"] is None  # that field is the automatic quarantine's
    text = await metrics_text(http, daemon)
    assert sample(text, "goipd_line_quarantined", server="hq", line="G101", kind="manual") == 1
    assert sample(text, "goipd_line_quarantined", server="hq", line="G102") is None
    assert sample(text, "goipd_line_healthy", server="hq", line="G101") == 0

    base = f"http://127.0.0.1:{daemon.port}"
    spread = [
        await send(http, base, {"to": [f"+88691200000{i}"], "text": f"spread {i}"})
        for i in range(6)
    ]
    pinned = await send(
        http,
        base,
        {"to": ["+886912000009"], "text": "pinned", "route": {"server": "hq", "line": "G101"}},
    )
    for message in spread:
        done = await wait_states(http, base, message["id"], {"delivered"})
        assert done["recipients"][0]["line"] == "G102"
    # The pinned message names only G101: it waits, however long.
    await asyncio.sleep(1.5)
    code, waiting = await api(http, daemon, "GET", f"/api/v1/messages/{pinned['id']}")
    assert waiting["recipients"][0]["state"] == "queued"
    assert {entry["goip_line"] for entry in await sent_log(http, hq, "hq")} == {"G102"}

    code, reply = await api(http, daemon, "DELETE", "/api/v1/lines/hq/G101/quarantine")
    assert code == 200, reply
    assert reply["released"] == ["manual"] and reply["quarantined"] is False
    done = await wait_states(http, base, pinned["id"], {"delivered"})
    assert done["recipients"][0]["line"] == "G101"
    assert (await line_of(http, daemon, "hq", "G101"))["healthy"] is True
    text = await metrics_text(http, daemon)
    assert sample(text, "goipd_line_quarantined", server="hq", line="G101", kind="manual") is None
    code, reply = await api(http, daemon, "DELETE", "/api/v1/lines/hq/G101/quarantine")
    assert code == 404 and reply["problem"] and "not quarantined" in reply["detail"]


async def test_unknown_servers_absent_lines_and_bad_requests(
    hq: RunningSimulator, daemon_factory: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon = await daemon_factory(config_for(hq, tmp_path))
    code, reply = await api(http, daemon, "PUT", "/api/v1/lines/nowhere/G101/quarantine", {})
    assert code == 404 and reply["problem"] and "no server named 'nowhere'" in reply["detail"]
    code, reply = await api(http, daemon, "DELETE", "/api/v1/lines/nowhere/G101/quarantine")
    assert code == 404 and reply["problem"]
    code, reply = await api(http, daemon, "PUT", "/api/v1/lines/hq/G%20101%3F/quarantine", {})
    assert code == 404 and "not a line id" in reply["detail"]
    for body, where in (
        ({"reason": 5}, "reason: expected a string"),
        ({"why": "x"}, "unknown field 'why'"),
        ({"reason": "x" * 201}, "at most 200 characters"),
        ([], "expected a JSON object"),
    ):
        code, reply = await api(http, daemon, "PUT", "/api/v1/lines/hq/G101/quarantine", body)
        assert code in (400, 422) and where in reply["detail"], reply
    # No body at all is fine: a quarantine without a reason.
    async with http.put(f"http://127.0.0.1:{daemon.port}/api/v1/lines/hq/G102/quarantine") as resp:
        assert resp.status == 200
        assert (await resp.json())["manual_quarantine"]["reason"] is None

    # A line the server does not report (yet): stored, and applied when it appears.
    code, reply = await api(
        http, daemon, "PUT", "/api/v1/lines/hq/G109/quarantine", {"reason": "new SIM, untested"}
    )
    assert code == 200 and reply["reported"] is False and reply["quarantined"] is True
    _, overview = await api(http, daemon, "GET", "/api/v1/status")
    assert {(q["line"], q["reported"]) for q in overview["manual_quarantines"]} == {
        ("G102", True),
        ("G109", False),
    }
    await control(http, hq, "POST", "servers/hq/lines", {"line_id": "G109"})

    async def appeared() -> bool:
        _, reply = await api(http, daemon, "GET", "/api/v1/lines?server=hq")
        return any(line["line"] == "G109" for line in reply["lines"])

    await eventually(appeared, 5, "G109 polled")
    g109 = await line_of(http, daemon, "hq", "G109")
    assert g109["state"] == "registered" and g109["healthy"] is False
    assert g109["manual_quarantine"]["reason"] == "new SIM, untested"


async def test_release_ends_a_quarantine_after_line_errors(
    hq: RunningSimulator, daemon_factory: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon = await daemon_factory(config_for(hq, tmp_path))
    await connect_push(http, hq, daemon, ["hq"])
    await control(http, hq, "PATCH", "servers/hq/lines/G101", {"fail_code": "331"})
    base = f"http://127.0.0.1:{daemon.port}"
    for i in range(3):
        message = await send(
            http,
            base,
            {
                "to": [f"+88691200001{i}"],
                "text": f"x{i}",
                "route": {"server": "hq", "line": "G101"},
            },
        )
        message_id = message["id"]
        await eventually(
            lambda message_id=message_id: _attempted(http, base, message_id),
            8,
            f"message {i} tried on G101",
        )
    g101 = await line_of(http, daemon, "hq", "G101")
    assert g101["quarantined_until"] is not None and g101["manual_quarantine"] is None
    assert g101["last_error"]["code"] == "331"
    assert "network" in g101["last_error"]["meaning"].lower()
    text = await metrics_text(http, daemon)
    assert sample(text, "goipd_line_quarantined", server="hq", line="G101", kind="errors") == 1
    code, reply = await api(http, daemon, "DELETE", "/api/v1/lines/hq/G101/quarantine")
    assert code == 200 and reply["released"] == ["errors"]
    assert (await line_of(http, daemon, "hq", "G101"))["quarantined"] is False


async def _attempted(http: aiohttp.ClientSession, base: str, message_id: str) -> bool:
    async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
        recipient = (await resp.json())["recipients"][0]
    return recipient["error"] is not None or recipient["state"] == "failed"


def storage_for(backend: str, tmp_path: Path, schema: str) -> dict[str, Any]:
    if backend == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'goipd.db'}"}
    return {"url": PG_URL, "pg_schema": schema}


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield schema
    await PostgresLedger(PG_URL, schema=schema).drop_schema()


@pytest.fixture
def daemon_factory(pg_schema: str, daemon_factory: Start) -> Start:
    """tests/conftest.py's, set up after pg_schema, so torn down before it: the daemons stop
    before their schema is dropped (DROP SCHEMA ... CASCADE under running instances can
    deadlock with their transactions)."""
    return daemon_factory


@pytest.mark.parametrize("backend", BACKENDS)
async def test_quarantine_survives_a_restart(
    backend: str,
    hq: RunningSimulator,
    daemon_factory: Start,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    config = config_for(hq, tmp_path, storage=storage_for(backend, tmp_path, pg_schema))
    first = await daemon_factory(config)
    code, _ = await api(http, first, "PUT", "/api/v1/lines/hq/G102/quarantine", {"reason": "r1"})
    assert code == 200
    await first.stop(grace=2.0)

    second = await daemon_factory(config)
    # Right after start: the first poll already found the line under its quarantine.
    g102 = await line_of(http, second, "hq", "G102")
    assert g102["manual_quarantine"]["reason"] == "r1" and g102["healthy"] is False
    code, reply = await api(http, second, "DELETE", "/api/v1/lines/hq/G102/quarantine")
    assert code == 200 and reply["released"] == ["manual"]
    await second.stop(grace=2.0)

    third = await daemon_factory(config)
    g102 = await line_of(http, third, "hq", "G102")
    assert g102["manual_quarantine"] is None and g102["healthy"] is True


async def test_instances_sharing_postgresql_see_each_others_quarantines(
    hq: RunningSimulator,
    daemon_factory: Start,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    storage = storage_for("postgresql", tmp_path, pg_schema)
    one = await daemon_factory(config_for(hq, tmp_path, storage=storage))
    two = await daemon_factory(config_for(hq, tmp_path, storage=storage))
    code, _ = await api(http, one, "PUT", "/api/v1/lines/hq/G101/quarantine", {"reason": "r"})
    assert code == 200

    async def two_sees(quarantined: bool) -> bool:
        line = await line_of(http, two, "hq", "G101")
        return bool(line["quarantined"]) is quarantined

    await eventually(lambda: two_sees(True), 12, "instance two picks up the quarantine")
    code, _ = await api(http, one, "DELETE", "/api/v1/lines/hq/G101/quarantine")
    assert code == 200
    await eventually(lambda: two_sees(False), 12, "instance two picks up the release")


async def test_cli_quarantine_lines_and_release(
    hq: RunningSimulator, daemon_factory: Start, tmp_path: Path
) -> None:
    daemon = await daemon_factory(config_for(hq, tmp_path))
    token_file = tmp_path / "token"
    token_file.write_text(API_TOKEN + "\n")
    connection = ["--url", f"http://127.0.0.1:{daemon.port}", "--token-file", str(token_file)]

    async def goipd(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "goipd",
            *args,
            *connection,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await goipd("quarantine", "hq", "G101", "--reason", "SIM swap")
    assert (code, err) == (0, ""), err
    assert out.strip() == "hq/G101 quarantined until released"
    code, out, _ = await goipd("lines", "--server", "hq", "--unhealthy")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("hq ")]
    assert rows == [
        ["hq", "G101", "registered", "no", "∞", "∞", "-", "-", "manual:", "SIM", "swap"]
    ]
    code, out, _ = await goipd("lines", "--json")
    assert code == 0
    by_line = {line["line"]: line for line in json.loads(out)["lines"]}
    assert by_line["G101"]["manual_quarantine"]["reason"] == "SIM swap"
    assert by_line["G102"]["manual_quarantine"] is None

    code, out, err = await goipd("quarantine", "hq", "G777", "--json")
    assert code == 0 and json.loads(out)["reported"] is False
    code, out, err = await goipd("quarantine", "hq", "G778")
    assert code == 0 and "does not report line G778" in err

    code, out, _ = await goipd("release", "hq", "G101")
    assert code == 0 and out.strip() == "hq/G101 released (manual quarantine)"
    code, out, err = await goipd("release", "hq", "G101")
    assert code == 1 and out == "" and "error 404" in err and "not quarantined" in err
    code, out, err = await goipd("release", "nowhere", "G1", "--json")
    assert code == 1 and json.loads(out)["status"] == 404
    code, out, _ = await goipd("lines", "--unhealthy")
    assert "G101" not in out
