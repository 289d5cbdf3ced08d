"""Settling claims a crash left `dispatching`, against the GoIP simulator over loopback HTTP: the
crash is reproduced by making the claim in the ledger and the sendsms call on the SMS Server
without recording its answer, exactly what a process killed inside the call leaves behind. A
send no report ever comes for fails with report_timeout after the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from goipd.app import Daemon
from goipd.model import Claim, Outcome, Recipient, State
from goipd.sim.goip import RunningSimulator
from goipd.upstream.goip import GoipClient, SendAccepted
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import daemon_config, fleet_spec
from tests.helpers.ledgers import new
from tests.helpers.pipeline import connect_push, message, send, wait_states

N = "+886912000001"
M = "+886912000002"
LATER = 3600.0
"""Messages are scheduled this far ahead so the running dispatcher leaves them alone."""


async def _claim(
    daemon: Daemon, numbers: tuple[str, ...], text: str, line: str | None, at: float
) -> list[Recipient]:
    accepted = await daemon.ledger.accept(new(numbers, text=text, send_at=at + LATER), at)
    recipients = list(accepted.message.recipients)
    claimed = await daemon.ledger.claim([Claim(r.id, "goip", "hq", line) for r in recipients], at)
    assert sorted(claimed) == sorted(r.id for r in recipients)
    return recipients


async def _send(client: GoipClient, numbers: tuple[str, ...], text: str, line: str | None) -> str:
    reply = await client.send_sms(list(numbers), text, goip_line=line)
    assert isinstance(reply, SendAccepted), reply
    return reply.task_id


async def _crashed_fleet(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> tuple[Daemon, GoipClient, float]:
    """A daemon whose ledger knows one earlier task of hq, recorded a minute ago: the task ids
    after it are where interrupted sends are looked for."""
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))
    client = daemon.poller.clients["hq"]
    now = time.time()
    (earlier,) = await _claim(daemon, ("+886912999999",), "earlier", None, now - 60)
    task = await _send(client, ("+886912999999",), "earlier", None)
    await daemon.ledger.record([Outcome(earlier.id, State.SUBMITTED, task_id=task)], now - 59)
    return daemon, client, now


async def _ambiguous(daemon: Daemon) -> float:
    text = await daemon.metrics.render_async()
    return sample(text.decode(), "goipd_dispatch_ambiguous_total") or 0.0


async def _task_of(daemon: Daemon, recipient: Recipient) -> str | None:
    """The task id an adopted claim carries (None if it was re-queued)."""
    message = await daemon.ledger.get_message(recipient.message_id)
    assert message is not None
    (found,) = [r for r in message.recipients if r.id == recipient.id]
    # An adopted task is asked about at once, so its state may already be past `submitted`.
    assert (found.state is State.QUEUED) == (found.task_id is None), found
    return found.task_id


async def test_two_claims_for_one_number_get_their_own_tasks_in_claim_order(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    daemon, client, now = await _crashed_fleet(simulator, daemon_factory, tmp_path)
    # Two messages to one number, claimed a second apart; both calls reached the SMS Server,
    # in claim order, and the process died before recording either answer.
    (first,) = await _claim(daemon, (N,), "first", None, now)
    (second,) = await _claim(daemon, (N,), "second", None, now + 1)
    first_task = await _send(client, (N,), "first", None)
    second_task = await _send(client, (N,), "second", None)

    await daemon.reconciler.startup()

    # Keyed by number alone, one task went to the wrong claim and the other claim was sent
    # again; each must carry its own task and nothing be re-queued.
    assert await _task_of(daemon, first) == first_task
    assert await _task_of(daemon, second) == second_task
    assert await _ambiguous(daemon) == 0


async def test_a_task_settles_claims_of_one_message_and_of_its_line(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    daemon, client, now = await _crashed_fleet(simulator, daemon_factory, tmp_path)
    # Claimed in this order, but sends run concurrently: the calls reached the SMS Server the
    # other way round, so task ids are not in claim order here.
    (alone,) = await _claim(daemon, (N,), "alone", "G101", now)
    pair = await _claim(daemon, (N, M), "pair", "G102", now + 1)
    pair_task = await _send(client, (N, M), "pair", "G102")
    alone_task = await _send(client, (N,), "alone", "G101")
    # Lines show in querysms once the sends have left "unsend".
    await asyncio.sleep(0.3)

    await daemon.reconciler.startup()

    assert await _task_of(daemon, alone) == alone_task
    assert [await _task_of(daemon, r) for r in pair] == [pair_task] * 2
    assert await _ambiguous(daemon) == 0


async def test_a_task_recorded_for_another_recipient_is_never_adopted(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    daemon, client, now = await _crashed_fleet(simulator, daemon_factory, tmp_path)
    # The claim's call never reached the SMS Server; a send to the same number by another
    # instance did, and that instance recorded its task.
    (lost,) = await _claim(daemon, (N,), "lost", None, now)
    (other,) = await _claim(daemon, (N,), "other", None, now + 1)
    other_task = await _send(client, (N,), "other", None)
    await daemon.ledger.record([Outcome(other.id, State.SUBMITTED, task_id=other_task)], now + 2)

    await daemon.reconciler.startup()

    assert await _task_of(daemon, lost) is None
    assert await _ambiguous(daemon) == 1


async def test_submitted_sends_of_a_removed_server_fail_after_the_deadline(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}], branch=[{"line_id": "B101"}]))
    # Neither server finishes a send: only the reconciler can settle them.
    for server in sim.fleet.servers.values():
        server.send_delay = 3600
    daemon = await daemon_factory(
        daemon_config(
            sim,
            ["hq", "branch"],
            tmp_path,
            reconcile={"interval": "1h", "query_after": "1h", "report_deadline": "1s"},
        )
    )
    base = f"http://127.0.0.1:{daemon.port}"
    kept = await send(http, base, {"to": [N], "text": "kept", "route": {"server": "hq"}})
    gone = await send(http, base, {"to": [N], "text": "gone", "route": {"server": "branch"}})
    await wait_states(http, base, kept["id"], {"submitted"})
    await wait_states(http, base, gone["id"], {"submitted"})
    assert daemon.settings.source is not None
    config = yaml.safe_load(daemon.settings.source.read_text())
    config["servers"] = [s for s in config["servers"] if s["name"] != "branch"]
    daemon.settings.source.write_text(yaml.safe_dump(config))
    assert await daemon.reload()

    # Before the deadline nothing is given up; hq's send is left to querysms/report_timeout,
    # which query_after keeps away here.
    await daemon.reconciler.run_once()
    assert (await message(http, base, gone["id"]))["recipients"][0]["state"] == "submitted"
    await asyncio.sleep(1.2)
    await daemon.reconciler.run_once()
    failed = (await message(http, base, gone["id"]))["recipients"][0]
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "server_removed"
    assert (await message(http, base, kept["id"]))["recipients"][0]["state"] == "submitted"


async def test_a_send_that_waited_for_a_send_slot_is_claimed_anew_before_it_starts(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    config = daemon_config(sim, ["hq"], tmp_path)
    config["servers"][0]["send_timeout"] = "400ms"
    daemon = await daemon_factory(config)
    # One send at a time, each sendsms call 250 ms (the client times out at 400 ms): the second
    # message is claimed while the first is sent, and its send starts ~250 ms after its claim.
    # Crash recovery scans task ids from the claim time on, for two send timeouts; a claim time
    # left over half a send timeout behind the send is what restamping prevents.
    daemon.dispatcher._slots = asyncio.Semaphore(1)
    sim.fleet.servers["hq"].set_fault("slow", delay=0.25)
    accepted_at = time.time()
    for text in ("first", "second"):
        await daemon.ledger.accept(new((N,), text=text), accepted_at)
    daemon.dispatcher.wake()

    claim_times: set[float] = set()
    deadline = time.monotonic() + 5
    second: Recipient | None = None
    while time.monotonic() < deadline:
        message = await daemon.ledger.list_messages(None, None, 10, None)
        (second,) = [m.recipients[0] for m in message if m.text == "second"]
        if second.state is State.DISPATCHING:
            claim_times.add(second.updated_at)
        elif second.state is not State.QUEUED:
            break
        await asyncio.sleep(0.02)
    assert second is not None and second.state in (State.SUBMITTED, State.SENT), second
    assert claim_times, "the second send was never seen in flight"
    # Restamped when its slot came (~250 ms after the claim), right before sendsms.
    assert max(claim_times) - accepted_at >= 0.2, sorted(t - accepted_at for t in claim_times)


async def test_submitted_without_any_report_fails_with_report_timeout(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    # A send the SMS Server never finishes: its sub-task stays "sending" forever.
    sim.fleet.servers["hq"].send_delay = 3600
    daemon = await daemon_factory(
        daemon_config(
            sim,
            ["hq"],
            tmp_path,
            reconcile={"interval": "1s", "query_after": "200ms", "report_deadline": "500ms"},
        )
    )
    await connect_push(http, sim, daemon, ["hq"])
    base = f"http://127.0.0.1:{daemon.port}"
    reply = await send(http, base, {"to": ["+886912345678"], "text": "into the void"})
    await wait_states(http, base, reply["id"], {"submitted"})

    async def timed_out() -> bool:
        await daemon.reconciler.run_once()
        data = await message(http, base, reply["id"])
        return bool(data["recipients"][0]["state"] == "failed")

    await eventually(timed_out, 5, "report_timeout")
    data = await message(http, base, reply["id"])
    assert data["recipients"][0]["error"]["code"] == "report_timeout"
