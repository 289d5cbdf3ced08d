"""/api/v1/alertmanager: the receiver over real HTTP against goipd and the simulated fleet, and
end to end with a real Alertmanager (Debian's prometheus-alertmanager) posting to goipd on
loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.alerts import SIM_DEAD, alert, payload
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, daemon_config, fleet_spec
from tests.helpers.processes import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

# --- the receiver over HTTP, against goipd and the simulated fleet ------------------------------

Relay = tuple[RunningSimulator, Daemon, str]
ALERTING = {
    "receivers": {
        "oncall": {"to": ["0912345678", "+886912345679"]},
        "pager": {
            "to": ["0912000111"],
            "route": {"server": "hq", "line": "G102"},
            "max_segments": 1,
        },
    },
    "dedup_window": "5m",
    "rate_limit": {"max_messages": 2, "per": "1h"},
}


@pytest.fixture
async def relay(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> Relay:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    config = daemon_config(
        sim,
        ["hq"],
        tmp_path,
        routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
        alerting=ALERTING,
    )
    daemon = await daemon_factory(config)
    return sim, daemon, f"http://127.0.0.1:{daemon.port}"


async def post(
    http: aiohttp.ClientSession, base: str, body: Any, status: int = 200
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(f"{base}/api/v1/alertmanager", **kwargs) as resp:
        reply: dict[str, Any] = await resp.json(content_type=None)
        assert resp.status == status, reply
        return reply


async def sent_to(
    http: aiohttp.ClientSession, sim: RunningSimulator, number: str
) -> list[dict[str, Any]]:
    sent = await control(http, sim, "GET", "servers/hq/sent")
    return [s for s in sent if s["number"].lstrip("+").endswith(number.lstrip("+")[-9:])]


async def metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        return await resp.text()


async def test_notification_becomes_a_durable_sms_once(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    sim, _daemon, base = relay
    scrape = await metrics(http, base)
    for outcome in ("sent", "deduplicated", "rate_limited", "failed"):
        assert (
            sample(
                scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome=outcome
            )
            == 0
        )
    reply = await post(http, base, payload())
    assert reply["outcome"] == "sent" and reply["status"] == "firing"
    assert reply["recipients"] == {"+886912345678": "sent", "+886912345679": "sent"}
    text = "[FIRING:1] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered"
    async with http.get(f"{base}/api/v1/messages/{reply['message_id']}") as resp:
        message = await resp.json()
    assert message["text"] == text
    assert message["encoding"] == "GSM-7" and message["segments"] == 1

    async def both_received() -> bool:
        got = [await sent_to(http, sim, n) for n in ("+886912345678", "+886912345679")]
        return all(g and g[0]["content"] == text for g in got)

    await eventually(both_received, 10, "the alert SMS reaches both numbers")
    # Alertmanager re-sending the same notification (a retry, or a flush with no news).
    again = await post(http, base, payload())
    assert again["outcome"] == "deduplicated"
    assert again["duplicate_of"] == reply["message_id"] and again["message_id"] is None
    resolved = await post(
        http,
        base,
        payload(alert("resolved", "SIM of line hq/G101 not registered"), status="resolved"),
    )
    assert resolved["outcome"] == "sent" and resolved["message_id"] != reply["message_id"]
    scrape = await metrics(http, base)
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome="sent")
        == 2
    )
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="oncall",
            outcome="deduplicated",
        )
        == 1
    )
    assert sample(scrape, "goipd_messages_accepted_total") == 4


async def test_forced_route_and_one_segment(relay: Relay, http: aiohttp.ClientSession) -> None:
    sim, _daemon, base = relay
    body = payload(alert(summary="the SIM stopped answering " * 20), receiver="pager")
    reply = await post(http, base, body)
    assert reply["recipients"] == {"+886912000111": "sent"}

    async def received() -> bool:
        return bool(await sent_to(http, sim, "+886912000111"))

    await eventually(received, 10, "the pager SMS is sent")
    (sms,) = await sent_to(http, sim, "+886912000111")
    assert sms["goip_line"] == "G102"
    assert len(sms["content"]) <= 160 and sms["content"].endswith("...")


async def test_rate_limit_leaves_out_numbers_over_the_limit(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    _sim, _daemon, base = relay
    for group in ("a", "b"):
        assert (await post(http, base, payload(group_key=group)))["outcome"] == "sent"
    third = await post(http, base, payload(group_key="c"))
    assert third["outcome"] == "rate_limited" and third["message_id"] is None
    assert third["recipients"] == {"+886912345678": "rate_limited", "+886912345679": "rate_limited"}
    scrape = await metrics(http, base)
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="oncall",
            outcome="rate_limited",
        )
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_recipients_rate_limited_total", receiver="oncall") == 2
    )
    # Another receiver's number has its own budget.
    assert (await post(http, base, payload(receiver="pager")))["outcome"] == "sent"


async def test_bad_requests_are_problems_and_counted_without_their_receiver(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    _sim, _daemon, base = relay
    problem = await post(http, base, payload(receiver="nobody"), status=404)
    assert problem["detail"] == "no receiver named 'nobody' under alerting.receivers"
    problem = await post(http, base, payload(receiver="nobody\ud800"), status=422)
    assert problem["detail"] == "receiver: holds a lone UTF-16 surrogate at character 6"
    problem = await post(http, base, payload() | {"status": "pending"}, status=400)
    assert problem["detail"] == 'status: expected "firing" or "resolved", got \'pending\''
    problem = await post(http, base, b"{", status=400)
    assert problem["detail"].startswith("request body is not valid JSON")
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(f"{base}/api/v1/alertmanager", json=payload()) as resp,
    ):
        assert resp.status == 401
    scrape = await metrics(http, base)
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="",
            outcome="unknown_receiver",
        )
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="", outcome="malformed")
        == 3
    )
    assert "nobody" not in scrape
    assert sample(scrape, "goipd_messages_accepted_total") == 0


async def test_reload_picks_up_changed_receivers(relay: Relay, http: aiohttp.ClientSession) -> None:
    _sim, daemon, base = relay
    assert daemon.settings.source is not None
    config = yaml.safe_load(daemon.settings.source.read_text())
    config["alerting"]["receivers"] = {"night": {"to": ["0912555666"]}}
    daemon.settings.source.write_text(yaml.safe_dump(config))
    assert await daemon.reload()
    reply = await post(http, base, payload(receiver="night"))
    assert reply["recipients"] == {"+886912555666": "sent"}
    await post(http, base, payload(receiver="oncall"), status=404)
    scrape = await metrics(http, base)
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="night", outcome="sent")
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome="sent")
        is None
    )


# --- end to end with a real Alertmanager --------------------------------------------------------


@contextmanager
def running_alertmanager(
    config: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Alertmanager on loopback; stopped (killed if need be) whatever happens."""
    assert ALERTMANAGER is not None
    port = free_port()
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config))
    config_file.chmod(0o600)
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config_file}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.skipif(
    ALERTMANAGER is None, reason="alertmanager not installed (make tools installs it)"
)
async def test_real_alertmanager_pages_through_goipd(
    relay: Relay, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _daemon, base = relay
    config = {
        "route": {
            "receiver": "oncall",
            "group_by": ["alertname", "server", "line"],
            "group_wait": "200ms",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "oncall",
                "webhook_configs": [
                    {
                        "url": f"{base}/api/v1/alertmanager",
                        "send_resolved": True,
                        "http_config": {"authorization": {"credentials": API_TOKEN}},
                    }
                ],
            }
        ],
    }
    started = datetime.now(UTC) - timedelta(seconds=5)
    alert = {
        "labels": {**SIM_DEAD, "line": "G102"},
        "annotations": {"summary": "SIM of line hq/G102 not registered"},
        "startsAt": _rfc3339(started),
        "generatorURL": "http://prometheus.invalid/graph",
    }
    numbers = ("+886912345678", "+886912345679")
    log = tmp_path / "alertmanager.log"
    with running_alertmanager(config, tmp_path) as (alertmanager, process):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as am:

            async def ready() -> bool:
                try:
                    async with am.get(f"{alertmanager}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 10, "Alertmanager ready")

            async def post_alert(body: dict[str, Any]) -> None:
                async with am.post(f"{alertmanager}/api/v2/alerts", json=[body]) as resp:
                    assert resp.status == 200, await resp.text()

            async def received(text: str) -> bool:
                sent = [await sent_to(http, sim, n) for n in numbers]
                return all(any(s["content"] == text for s in got) for got in sent)

            await post_alert(alert)
            firing = (
                "[FIRING:1] GoipdSimDead line=G102 server=hq: SIM of line hq/G102 not registered"
            )
            try:
                await eventually(lambda: received(firing), 15, "the firing SMS reaches the SIM")
                # Resolved: the same alert again, ended in the past.
                await post_alert(
                    alert | {"endsAt": _rfc3339(datetime.now(UTC) - timedelta(seconds=1))}
                )
                resolved = firing.replace("[FIRING:1]", "[RESOLVED:1]")
                await eventually(lambda: received(resolved), 15, "the resolved SMS reaches the SIM")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n--- alertmanager log ---\n{log.read_text()[-3000:]}"
                ) from None
    assert process.returncode is not None, "Alertmanager still running"
    for number in numbers:
        contents = sorted(s["content"] for s in await sent_to(http, sim, number))
        assert contents == [firing, resolved], (number, contents)
