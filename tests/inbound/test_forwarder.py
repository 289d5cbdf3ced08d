"""The forwarder keeps forwarding through a ledger that refuses writes (a real SQLite writer
switched to query-only)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from goipd.config import InboundSettings
from goipd.inbound.forwarder import InboundForwarder
from goipd.ledger.sqlite import SqliteLedger
from tests.helpers.checks import eventually
from tests.helpers.cloud import serve_routes
from tests.helpers.ledgers import set_read_only


async def test_forwarding_goes_on_after_the_ledger_refused_writes(ledger: SqliteLedger) -> None:
    received: list[dict[str, Any]] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    async with serve_routes(web.post("/inbound", receiver)) as base:
        url = f"{base}/inbound"
        first = await ledger.add_inbound("hq", "G101", "+886911", None, "one", "t", 1.0, (url,))
        await set_read_only(ledger, True)
        forwarder = InboundForwarder(ledger, lambda: InboundSettings(forward_urls=(url,)))
        task = asyncio.create_task(forwarder.run())
        try:
            # Posted, but the result cannot be written: the row stays due.
            await eventually(lambda: asyncio.sleep(0, bool(received)), 5, "first forward")
            await asyncio.sleep(1.5)
            assert not task.done()
            # Not posted again and again while the ledger refuses (one try per second at most).
            assert len(received) <= 3
            assert len(await ledger.outbox_due(1e12, 10)) == 1
            await set_read_only(ledger, False)
            await eventually(
                lambda: asyncio.sleep(0, len(received) >= 2), 5, "forwarded again after recovery"
            )

            async def recorded() -> bool:
                return not await ledger.outbox_due(1e12, 10)

            await eventually(recorded, 5, "forward recorded after recovery")
            second = await ledger.add_inbound(
                "hq", "G101", "+886922", None, "two", "t", 2.0, (url,)
            )
            forwarder.wake()
            await eventually(
                lambda: asyncio.sleep(0, received[-1]["id"] == second), 5, "a new SMS forwarded"
            )
            assert {r["id"] for r in received} == {first, second}
        finally:
            await forwarder.stop()
            await task
