"""Routing decisions that outlive a SIGKILL and are shared by instances on one PostgreSQL ledger,
with goipd as its own process and the simulators over loopback: a line quarantined after line
errors (CMS 331 from the simulated SMS Server, in pushed reports) and a cloud provider disabled
for refused credentials (the PaaSoo simulator answering 401). The restarted goipd, and the other
instance, act on them exactly as the first one would have: no send on the line until the
quarantine's end, none to the provider at all."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.cloud import Clouds, providers
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.pipeline import send, sent_log, wait_states
from tests.helpers.processes import Goipd, free_port, process_config, start_process

Simulator = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
LINES = [{"line_id": "G101"}, {"line_id": "G102"}]
PINNED = {"server": "hq", "line": "G101"}
HANDED_OVER = {"submitted", "sent", "delivered"}


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield schema
    await PostgresLedger(PG_URL, schema=schema).drop_schema()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as session:
        yield session


@pytest.fixture
def processes(pg_schema: str) -> Iterator[list[Goipd]]:
    """The goipd processes a test starts, killed after it. Set up after pg_schema, so torn down
    before it: the schema is dropped once nothing uses it any more (dropped under running
    instances, DROP SCHEMA ... CASCADE can deadlock with their transactions)."""
    started: list[Goipd] = []
    yield started
    for daemon in started:
        daemon.ensure_dead()


def storage_for(backend: str, tmp_path: Path, schema: str) -> dict[str, str]:
    if backend == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'goipd.db'}"}
    return {"url": PG_URL, "pg_schema": schema}


async def launch(
    http: aiohttp.ClientSession, started: list[Goipd], config: dict[str, Any], name: str, path: Path
) -> Goipd:
    port = int(config["http"]["listen"].rsplit(":", 1)[1])
    daemon = start_process(config, port, path, name)
    started.append(daemon)
    daemon.start()
    await daemon.ready(http)
    return daemon


async def restart(http: aiohttp.ClientSession, daemon: Goipd) -> None:
    daemon.start()
    await daemon.ready(http)


def base(daemon: Goipd) -> str:
    return f"http://127.0.0.1:{daemon.port}"


async def line(http: aiohttp.ClientSession, daemon: Goipd, line_id: str) -> dict[str, Any]:
    async with http.get(f"{base(daemon)}/api/v1/lines?server=hq") as resp:
        assert resp.status == 200
        reply = await resp.json()
    found: dict[str, Any] = next(item for item in reply["lines"] if item["line"] == line_id)
    return found


async def quarantine_by_line_errors(
    http: aiohttp.ClientSession, sim: RunningSimulator, daemon: Goipd
) -> float:
    """G101 fails every send with CMS 331: `routing.quarantine_after` (3) reports of it reach
    `daemon`, which quarantines the line; returns the quarantine's end."""
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"fail_code": "331"})
    for i in range(3):
        body = {"to": [f"+88691200100{i}"], "text": f"fails {i}", "route": PINNED}
        await send(http, base(daemon), body)
    found: dict[str, Any] = {}

    async def quarantined() -> bool:
        found.update(await line(http, daemon, "G101"))
        return found["quarantined_until"] is not None

    await eventually(quarantined, 10, "G101 quarantined after its line errors")
    assert "CMS 331" in found["quarantine_reason"] and found["manual_quarantine"] is None
    return float(found["quarantined_until"])


async def line_repaired(http: aiohttp.ClientSession, sim: RunningSimulator) -> None:
    """G101 works again: from here on only the quarantine keeps goipd off it."""
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"fail_code": None})


async def spread_over_lines(
    http: aiohttp.ClientSession, daemon: Goipd, tag: str, count: int = 4
) -> list[str]:
    """Unpinned messages, handed to the SMS Server: the lines they went out on."""
    ids = [
        (await send(http, base(daemon), {"to": [f"+8869120020{i:02d}"], "text": f"{tag} {i}"}))[
            "id"
        ]
        for i in range(count)
    ]
    used = []
    for message_id in ids:
        # Handed over is enough: a report pushed to an instance that is down is lost.
        done = await wait_states(http, base(daemon), message_id, HANDED_OVER)
        used.append(done["recipients"][0]["line"])
    return used


async def test_a_quarantine_after_line_errors_outlives_a_sigkill_until_its_end(
    simulator: Simulator, http: aiohttp.ClientSession, processes: list[Goipd], tmp_path: Path
) -> None:
    port = free_port()
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", hq=LINES))
    routing = {"line_rate_per_minute": 600, "retry_delay": "100ms", "quarantine_for": "8s"}
    config = process_config(sim, port, storage_for("sqlite", tmp_path, ""), routing=routing)
    daemon = await launch(http, processes, config, "goipd", tmp_path)
    until = await quarantine_by_line_errors(http, sim, daemon)
    await line_repaired(http, sim)

    daemon.kill()
    await restart(http, daemon)
    mark = time.time()
    g101 = await line(http, daemon, "G101")
    assert g101["quarantined"] is True and g101["quarantined_until"] == until
    assert time.time() < until, "the restart took longer than the quarantine: lengthen it"
    assert set(await spread_over_lines(http, daemon, "after restart")) == {"G102"}
    # A message that may only use G101 waits for the quarantine's end, then goes out there.
    pinned = await send(
        http, base(daemon), {"to": ["+886912003000"], "text": "G101 only", "route": PINNED}
    )
    await wait_states(
        http, base(daemon), pinned["id"], {"delivered"}, within=until - time.time() + 8
    )
    on_g101 = [e["at"] for e in await sent_log(http, sim, "hq") if e["goip_line"] == "G101"]
    assert [at for at in on_g101 if at >= mark], "nothing went out on G101 after its quarantine"
    assert min(at for at in on_g101 if at >= mark) >= until


async def test_instances_on_one_postgresql_route_around_a_quarantine_one_of_them_set(
    simulator: Simulator,
    http: aiohttp.ClientSession,
    processes: list[Goipd],
    tmp_path: Path,
    pg_schema: str,
) -> None:
    ports = {"alpha": free_port(), "beta": free_port()}
    # The SMS Server pushes its reports to alpha alone: only alpha counts the line errors.
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{ports['alpha']}", hq=LINES))
    routing = {"line_rate_per_minute": 600, "retry_delay": "100ms", "quarantine_for": "60s"}
    instances = {
        name: await launch(
            http,
            processes,
            process_config(
                sim,
                port,
                storage_for("postgresql", tmp_path, pg_schema),
                routing=routing,
                ha={"instance_id": name},
            ),
            name,
            tmp_path,
        )
        for name, port in ports.items()
    }
    alpha, beta = instances["alpha"], instances["beta"]
    until = await quarantine_by_line_errors(http, sim, alpha)
    started = time.monotonic()

    async def beta_has_it() -> bool:
        return bool((await line(http, beta, "G101"))["quarantined_until"] == until)

    await eventually(beta_has_it, 8, "beta adopts alpha's quarantine from the ledger")
    assert time.monotonic() - started < 7  # one sync interval (5 s) and a little
    await line_repaired(http, sim)

    alpha.kill()
    mark = time.time()
    assert set(await spread_over_lines(http, beta, "beta alone")) == {"G102"}
    await restart(http, alpha)
    assert (await line(http, alpha, "G101"))["quarantined_until"] == until
    assert set(await spread_over_lines(http, alpha, "alpha again")) == {"G102"}
    assert [
        e for e in await sent_log(http, sim, "hq") if e["at"] >= mark and e["goip_line"] == "G101"
    ] == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_provider_disabled_for_credentials_stays_disabled_everywhere(
    backend: str,
    simulator: Simulator,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    processes: list[Goipd],
    tmp_path: Path,
    pg_schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101", "reg": "LOGOUT"}]))
    names = ["alpha", "beta"] if backend == "postgresql" else ["alpha"]
    instances = []
    for name in names:
        port = free_port()
        config = process_config(
            sim,
            port,
            storage_for(backend, tmp_path, pg_schema),
            ha={"instance_id": name},
            routes=[{"via": [{"cloud": "paasoo"}, {"cloud": "smsgo"}]}],
            providers={k: v for k, v in providers(clouds).items() if k in ("paasoo", "smsgo")},
        )
        instances.append(await launch(http, processes, config, name, tmp_path))
    paasoo = clouds.paasoo.sim

    async def disabled(daemon: Goipd) -> bool:
        async with http.get(f"{base(daemon)}/metrics") as resp:
            text = await resp.text()
        return sample(text, "goipd_provider_disabled", provider="paasoo") == 1

    async def routed(daemon: Goipd, tag: str) -> list[str]:
        ids = [
            (await send(http, base(daemon), {"to": [f"+8869123400{i:02d}"], "text": f"{tag} {i}"}))[
                "id"
            ]
            for i in range(3)
        ]
        routes = []
        for message_id in ids:
            done = await wait_states(http, base(daemon), message_id, {"sent", "delivered"})
            routes.append(done["recipients"][0]["route"])
        return routes

    paasoo.set_fault("auth")
    first = await send(http, base(instances[0]), {"to": ["+886912340099"], "text": "refused"})
    done = await wait_states(http, base(instances[0]), first["id"], {"sent", "delivered"})
    assert done["recipients"][0]["route"] == "smsgo" and paasoo.counters["requests"] >= 1
    for daemon in instances:
        await eventually(functools.partial(disabled, daemon), 8, "paasoo disabled everywhere")

    # PaaSoo works again, but nothing tells goipd so before the next probe (10 minutes).
    paasoo.set_fault("none")
    requests = paasoo.counters["requests"]
    instances[0].kill()
    for other in instances[1:]:
        assert set(await routed(other, "while alpha is down")) == {"smsgo"}
    await restart(http, instances[0])
    assert await disabled(instances[0])
    assert set(await routed(instances[0], "after the restart")) == {"smsgo"}
    for daemon in instances:
        assert await disabled(daemon)
    assert paasoo.counters["requests"] == requests
