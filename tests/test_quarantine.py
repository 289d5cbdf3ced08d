"""Manual line quarantine: stored in both ledgers (and migrated into old ones), mirrored in the
registry, respected by routing, shown in the API and the metrics, kept across restarts, shared
by goipd instances on one PostgreSQL, and driven by `goipd quarantine` / `goipd release`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from goipd.app import Daemon
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.ledger import postgres
from goipd.ledger.migrations import MIGRATIONS, migrate
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import LineQuarantine
from goipd.sim.goip import RunningSimulator
from tests.conftest import API_TOKEN, control, daemon_config, eventually, fleet_spec, sample
from tests.test_pipeline_e2e import connect_push, send, sent_log, wait_states
from tests.test_registry import status
from tests.test_routing import make_router

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_800_000_000.0
Ledger = SqliteLedger | PostgresLedger
BACKENDS = ["sqlite", "postgresql"]


# --- the ledger ---------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def open_ledger(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Ledger]]]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    opened: list[Ledger] = []

    async def open_one() -> Ledger:
        store: Ledger = (
            SqliteLedger(tmp_path / "goipd.db")
            if request.param == "sqlite"
            else PostgresLedger(PG_URL, schema=schema)
        )
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    if request.param == "postgresql":
        await PostgresLedger(PG_URL, schema=schema).drop_schema()


async def test_ledger_stores_rewords_and_releases(
    open_ledger: Callable[[], Awaitable[Ledger]],
) -> None:
    ledger = await open_ledger()
    assert await ledger.line_quarantines() == []
    first = await ledger.quarantine_line("hq", "G101", "SIM swap", NOW)
    assert first == LineQuarantine("hq", "G101", "SIM swap", NOW)
    # A repeat changes the reason, not when it started.
    again = await ledger.quarantine_line("hq", "G101", None, NOW + 60)
    assert again == LineQuarantine("hq", "G101", None, NOW)
    await ledger.quarantine_line("branch", "G201", "antenna", NOW + 1)
    assert await ledger.line_quarantines() == [
        LineQuarantine("branch", "G201", "antenna", NOW + 1),
        LineQuarantine("hq", "G101", None, NOW),
    ]
    await ledger.close()
    reopened = await open_ledger()
    assert len(await reopened.line_quarantines()) == 2
    assert await reopened.release_line("hq", "G101") is True
    assert await reopened.release_line("hq", "G101") is False
    assert await reopened.release_line("nowhere", "G1") is False
    assert await reopened.line_quarantines() == [
        LineQuarantine("branch", "G201", "antenna", NOW + 1)
    ]


async def test_sqlite_ledger_of_the_previous_schema_gets_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:3])
    conn.close()
    ledger = SqliteLedger(path)
    await ledger.open()
    try:
        await ledger.quarantine_line("hq", "G101", "upgraded", NOW)
        assert [q.reason for q in await ledger.line_quarantines()] == ["upgraded"]
    finally:
        await ledger.close()


async def test_postgres_ledger_of_the_previous_schema_gets_the_table() -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, script in enumerate(postgres.MIGRATIONS[:2], 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
    finally:
        await conn.close()
    ledger = PostgresLedger(PG_URL, schema=schema)
    await ledger.open()
    try:
        await ledger.quarantine_line("hq", "G101", "upgraded", NOW)
        assert [q.reason for q in await ledger.line_quarantines()] == ["upgraded"]
    finally:
        await ledger.close()
        await ledger.drop_schema()


# --- registry and routing -----------------------------------------------------------------------


def test_manual_quarantine_waits_for_its_line_and_survives_a_disappearance() -> None:
    registry = LineRegistry(["hq"])
    registry.set_manual("hq", "G2", ManualQuarantine("broken SIM", NOW))
    registry.apply_poll("hq", [status("G1"), status("G2")], NOW)
    g1, g2 = registry.line("hq", "G1"), registry.line("hq", "G2")
    assert g1 is not None and g2 is not None
    assert g2.quarantined(NOW) and not g2.healthy and not g2.auto_quarantined(NOW)
    assert not g1.quarantined(NOW) and g1.healthy
    registry.apply_poll("hq", [status("G1")], NOW + 1)  # G2 is gone...
    registry.apply_poll("hq", [status("G1"), status("G2")], NOW + 2)  # ...and back
    again = registry.line("hq", "G2")
    assert again is not None and again is not g2 and again.manual_quarantine is not None
    # No expiry: a year later it is still quarantined.
    assert again.quarantined(NOW + 365 * 86400)
    registry.replace_manual({})
    assert again.manual_quarantine is None and again.healthy


def test_routing_never_chooses_a_manually_quarantined_line() -> None:
    router, registry = make_router({"hq": [status("G1"), status("G2")]})
    targets = router.targets_for("+886912345678")
    registry.set_manual("hq", "G1", ManualQuarantine(None, NOW))
    for step in range(20):
        choice = router.choose(targets, NOW + step * 120)
        assert choice is not None and choice.line == "G2"  # type: ignore[union-attr]
        router.record_use(choice, 1, NOW + step * 120)
    registry.set_manual("hq", "G1", None)
    lines = set()
    for step in range(4):
        choice = router.choose(targets, NOW + 3000 + step * 120)
        assert choice is not None
        lines.add(choice.line)  # type: ignore[union-attr]
        router.record_use(choice, 1, NOW + 3000 + step * 120)
    assert lines == {"G1", "G2"}


def test_release_ends_an_automatic_quarantine_early() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], NOW)
    for _ in range(3):
        registry.note_send_result(
            "hq", "G1", line_error=True, code="331", threshold=3, cooldown=600, now=NOW
        )
    line = registry.line("hq", "G1")
    assert line is not None and line.auto_quarantined(NOW + 1)
    assert line.last_error_code == "331"
    assert registry.release_auto("hq", "G1", NOW + 1) is True
    assert not line.quarantined(NOW + 1)
    assert registry.release_auto("hq", "G1", NOW + 1) is False


# --- the daemon ---------------------------------------------------------------------------------

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
    assert rows == [["hq", "G101", "registered", "no", "∞", "∞", "manual:", "SIM", "swap"]]
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
